"""Tissue detection on a low-resolution image, GeoJSON polygons in level-0 px, and the QC picture.

All sizes are micrometres (config `tissue`), converted with the image's own um/px, so the same
parameters work for 20x and 40x scanners. The mask that patching uses is always the rasterised
polygons (`mask_from_polygons`), so the GeoJSON a pathologist sees - or edits in QuPath - is exactly
what selects the patches.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from healnet import config

log = logging.getLogger(__name__)

# A polygon: outer ring then holes, each an (n, 2) float array of (x, y) in image px.
Polygon = list[np.ndarray]


@dataclass
class TissueResult:
    mask: np.ndarray  # uint8 {0, 1}, thumbnail size; the rasterised polygons
    polygons: list[Polygon]  # thumbnail px
    threshold: float  # saturation threshold used
    area_mm2: float
    info: dict[str, Any] = field(default_factory=dict)


def _odd(n_px: float) -> int:
    """An odd kernel size >= 1 (OpenCV's median blur needs odd sizes)."""
    k = int(round(n_px))
    return max(1, k + (k % 2 == 0))


@dataclass
class Brightfield:
    """What the brightfield check measured on the thumbnail, and what is wrong ("" if nothing)."""

    background_grey: float  # median grey of the least saturated tenth of the pixels: the glass
    stained_fraction: float  # share of pixels that are coloured and neither dark nor glass
    offstain_fraction: float  # share of those that are green/cyan
    problem: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "background_grey": round(self.background_grey, 1),
            "stained_fraction": round(self.stained_fraction, 4),
            "offstain_fraction": round(self.offstain_fraction, 4),
        }


def check_brightfield(rgb: np.ndarray, params: config.Tissue) -> Brightfield:
    """Brightfield H&E / IHC means coloured tissue on light glass: the least coloured pixels (the
    glass, or the palest tissue on a fully covered slide) are light, and the stain is pink, purple,
    blue or brown. Fluorescence puts its signal on black, and black is the least coloured: the
    background grey of the real DAPI slide is 10, of the real H&E slides 243-255, of a synthetic slide
    fully covered by H&E 177. Green/cyan stain (FITC-like) has no place in H&E or DAB."""
    step = max(1, int(np.ceil(np.sqrt(rgb.shape[0] * rgb.shape[1] / 5e5))))  # 0.5 Mpx is plenty for statistics
    rgb = np.ascontiguousarray(rgb[::step, ::step])
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    sat = hsv[..., 1]
    background = _quantile_u8(grey[sat <= _quantile_u8(sat, 0.1)], 0.5) if grey.size else 255.0
    stained = (hsv[..., 1] > params.min_saturation) & (grey >= params.dark_value)
    hue = hsv[..., 0][stained]  # OpenCV hue is degrees / 2
    offstain = float(np.mean((hue >= 35) & (hue < 100))) if hue.size else 0.0
    result = Brightfield(background, float(stained.mean()) if grey.size else 0.0, offstain)
    problems = []
    if background < params.min_background_grey:
        problems.append(
            f"dark background (grey {background:.0f} where the slide is least coloured < "
            f"tissue.min_background_grey {params.min_background_grey}; brightfield glass is light)"
        )
    if hue.size and offstain > params.max_offstain_fraction:
        problems.append(
            f"stain colour far from H&E/IHC ({offstain:.0%} of the stained pixels are green/cyan, "
            f"hue 70-200 deg > tissue.max_offstain_fraction {params.max_offstain_fraction:g})"
        )
    result.problem = "; ".join(problems)
    return result


def _quantile_u8(values: np.ndarray, q: float) -> float:
    """The lower q-quantile of uint8 values, from their histogram (no sort)."""
    cum = np.cumsum(np.bincount(values.ravel(), minlength=256))
    return float(np.searchsorted(cum, q * cum[-1]))


def foreground(rgb: np.ndarray, um_per_px: float, params: config.Tissue) -> tuple[np.ndarray, float]:
    """Saturation above the (Otsu) threshold, minus dark and pen pixels, median-blurred and
    morphologically closed. Returns the binary mask (uint8 0/1) and the saturation threshold.
    The median blur runs once, on the combined binary mask (a majority vote that removes specks
    and noise), instead of once per channel: a third of the cost on a 100k x 80k slide.
    Fluorescence (`slide_type`): the signal is brightness (max of R, G, B) above a dark background,
    with no dark or pen filter."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    fluorescence = params.slide_type == "fluorescence"
    sat = np.ascontiguousarray(hsv[..., 2 if fluorescence else 1])
    if params.saturation_threshold is not None:
        thr = float(params.saturation_threshold)
    else:
        # Fluorescence: the triangle method suits a histogram piled up at black with a long tail of
        # signal (Otsu splits bright nuclei from dim tissue instead: 22% of a DAPI section, not 85%).
        method = cv2.THRESH_TRIANGLE if fluorescence else cv2.THRESH_OTSU
        otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + method)
        # Otsu always splits, even an empty slide's noise; the floor keeps blank glass blank.
        thr = max(float(otsu), float(params.min_saturation))
    fg = sat > thr
    if params.filter_dark and not fluorescence:
        fg &= hsv[..., 2] >= params.dark_value
    if params.filter_pen and not fluorescence:
        # Green/blue marker ink: hue 70-236 deg (OpenCV 35-118) and saturated. H&E (pink to purple,
        # 250-360 deg) and blood (about 0 deg) stay outside this band.
        hue = hsv[..., 0]
        fg &= ~((hue >= 35) & (hue <= 118) & (sat > 60))
    mask = fg.astype(np.uint8)
    k_blur = _odd(params.median_blur_um / um_per_px) if params.median_blur_um else 1
    if k_blur > 1:
        mask = cv2.medianBlur(mask, k_blur)
    k_close = _odd(params.closing_um / um_per_px) if params.closing_um else 1
    if k_close > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k_close, k_close))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    return mask, thr


def polygons_from_mask(mask: np.ndarray, um2_per_px: float, params: config.Tissue) -> list[Polygon]:
    """Outer contours of at least `min_tissue_area_um2`, each with its holes of at least
    `min_hole_area_um2` (at most `max_holes`, largest first); smaller holes are filled."""
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]  # per contour: next, previous, first child, parent
    polygons: list[Polygon] = []
    for i, contour in enumerate(contours):
        if hierarchy[i][3] != -1:
            continue  # a hole; handled with its parent
        if cv2.contourArea(contour) * um2_per_px < params.min_tissue_area_um2 or len(contour) < 3:
            continue
        holes = []
        child = hierarchy[i][2]
        while child != -1:
            area = cv2.contourArea(contours[child]) * um2_per_px
            if area >= params.min_hole_area_um2 and len(contours[child]) >= 3:
                holes.append((area, contours[child]))
            child = hierarchy[child][0]
        holes.sort(key=lambda t: -t[0])
        rings = [contour] + [h for _, h in holes[: params.max_holes]]
        polygons.append([r.reshape(-1, 2).astype(np.float64) for r in rings])
    polygons.sort(key=lambda p: -cv2.contourArea(p[0].astype(np.float32)))
    return polygons


def mask_from_polygons(polygons: list[Polygon], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise polygons (image px) into a uint8 {0, 1} mask of `shape` (h, w)."""
    mask = np.zeros(shape, np.uint8)
    for rings in polygons:
        pts = [np.round(r).astype(np.int32) for r in rings]
        x0, y0 = np.maximum(pts[0].min(0), 0)
        x1, y1 = np.minimum(pts[0].max(0) + 1, (shape[1], shape[0]))
        if x1 <= x0 or y1 <= y0:
            continue
        local = np.zeros((y1 - y0, x1 - x0), np.uint8)
        shifted = [p - (x0, y0) for p in pts]
        cv2.fillPoly(local, [shifted[0]], 1)
        if len(shifted) > 1:
            cv2.fillPoly(local, shifted[1:], 0)
            # A hole contour runs over the tissue pixels bordering the hole; put them back.
            cv2.polylines(local, shifted[1:], True, 1, thickness=1)
        mask[y0:y1, x0:x1] |= local
    return mask


def detect_tissue(rgb: np.ndarray, um_per_px: tuple[float, float], params: config.Tissue) -> TissueResult:
    """Tissue polygons and mask of an RGB image whose pixels are `um_per_px` (x, y) micrometres."""
    um = float(np.mean(um_per_px))
    raw, thr = foreground(rgb, um, params)
    polygons = polygons_from_mask(raw, um_per_px[0] * um_per_px[1], params)
    mask = mask_from_polygons(polygons, raw.shape)
    area_mm2 = float(mask.sum()) * um_per_px[0] * um_per_px[1] / 1e6
    holes = sum(len(p) - 1 for p in polygons)
    log.info(
        "tissue: %d polygon(s), %d hole(s), %.2f mm^2 (%s threshold %.0f, mask %.2f um/px)",
        len(polygons),
        holes,
        area_mm2,
        "brightness" if params.slide_type == "fluorescence" else "saturation",
        thr,
        um,
    )
    return TissueResult(mask, polygons, thr, area_mm2, {"n_polygons": len(polygons), "n_holes": holes})


# --- GeoJSON (level-0 px) ---------------------------------------------------------------------------


def to_level0(points: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Image px (pixel centres) -> level-0 px."""
    return (points + 0.5) / np.asarray(scale)


def from_level0(points: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    return np.asarray(points, np.float64) * np.asarray(scale) - 0.5


def _ring(points: np.ndarray, clockwise: bool) -> list[list[float]]:
    """A closed GeoJSON ring with the wanted winding (in y-down image coordinates)."""
    x, y = points[:, 0], points[:, 1]
    signed = 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))  # > 0: clockwise on screen
    if (signed > 0) != clockwise:
        points = points[::-1]
    coords = [[round(float(a), 2), round(float(b), 2)] for a, b in points]
    return coords + [coords[0]]


def tissue_geojson(polygons: list[Polygon], scale: tuple[float, float], meta: dict[str, Any]) -> dict[str, Any]:
    """A FeatureCollection QuPath imports as 'Tissue' annotations; `meta` (status, mpp, mask geometry,
    parameters) is kept under the top-level member `healnet` for the next stages."""
    features = []
    for rings in polygons:
        geo = [_ring(to_level0(rings[0], scale), clockwise=False)]
        geo += [_ring(to_level0(h, scale), clockwise=True) for h in rings[1:]]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": geo},
                "properties": {"objectType": "annotation", "classification": {"name": "Tissue", "color": [0, 160, 0]}},
            }
        )
    return {"type": "FeatureCollection", "features": features, "healnet": meta}


def read_tissue_geojson(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"tissue file {path}: cannot be read as JSON ({err}); rerun the tissue rule") from None
    if data.get("type") != "FeatureCollection" or "healnet" not in data:
        raise ValueError(
            f"tissue file {path}: not a healnet tissue GeoJSON (needs a FeatureCollection with a `healnet` "
            "member); rerun `healnet tissue` for this slide"
        )
    return data


def polygons_from_geojson(data: dict[str, Any], scale: tuple[float, float]) -> list[Polygon]:
    """Polygons (and MultiPolygons, e.g. edited in QuPath) back in mask px."""
    out: list[Polygon] = []
    for feat in data.get("features", []):
        geom = feat.get("geometry") or {}
        polys = (
            [geom["coordinates"]]
            if geom.get("type") == "Polygon"
            else (geom["coordinates"] if geom.get("type") == "MultiPolygon" else [])
        )
        for rings in polys:
            out.append([from_level0(np.asarray(r, np.float64)[:-1], scale) for r in rings])
    return out


# --- QC picture -------------------------------------------------------------------------------------


def render_qc(
    rgb: np.ndarray,
    polygons: list[Polygon],
    coords: np.ndarray,
    patch_size_level0: int,
    scale: tuple[float, float],
    title: str,
    max_side: int = 1600,
) -> np.ndarray:
    """Thumbnail with tissue outlines (green), holes (orange) and the kept patch grid (blue), as RGB."""
    # Fit the longest side to max_side: shrink big slides, enlarge small ones (up to 8x) so the grid shows.
    f = min(8.0, max_side / max(rgb.shape[:2]))
    img = cv2.resize(rgb, None, fx=f, fy=f, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    sx, sy = scale[0] * f, scale[1] * f
    for x, y in np.asarray(coords).reshape(-1, 2):
        p0 = (int(x * sx), int(y * sy))
        p1 = (int((x + patch_size_level0) * sx), int((y + patch_size_level0) * sy))
        cv2.rectangle(img, p0, p1, (40, 90, 230), 1)
    for rings in polygons:
        pts = [np.round((r + 0.5) * f - 0.5).astype(np.int32) for r in rings]
        cv2.polylines(img, pts[:1], True, (0, 170, 0), 2)
        if len(pts) > 1:
            cv2.polylines(img, pts[1:], True, (255, 140, 0), 2)
    return _with_banner(img, title)


def render_not_brightfield(rgb: np.ndarray, check: Brightfield, title: str, max_side: int = 800) -> np.ndarray:
    """The thumbnail as it is (so the dark background or the stain shows), a swatch of the measured
    background grey and of the median stained colour, and the figures of the check in words."""
    f = min(8.0, max_side / max(rgb.shape[:2]))
    img = cv2.resize(rgb, None, fx=f, fy=f, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    stained = rgb[hsv[..., 1] > 15]
    stain = np.median(stained, axis=0) if len(stained) else np.full(3, 255.0)
    note = _text_block(f"not a brightfield slide: {check.problem}", max(img.shape[1], 480))
    swatch = np.full((60, note.shape[1], 3), 255, np.uint8)
    for i, (label, colour) in enumerate(
        (("background grey", [check.background_grey] * 3), ("median stained colour", stain))
    ):
        x = 10 + 240 * i
        cv2.rectangle(swatch, (x, 8), (x + 40, 48), tuple(int(c) for c in colour), -1)
        cv2.rectangle(swatch, (x, 8), (x + 40, 48), (0, 0, 0), 1)
        cv2.putText(swatch, label, (x + 46, 33), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    width = max(img.shape[1], note.shape[1])
    parts = [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in (img, swatch, note)]
    return _with_banner(np.concatenate(parts, axis=0), title)


def render_message(title: str, message: str, width: int = 640) -> np.ndarray:
    """A QC picture for a slide that has no thumbnail (unreadable, no mpp): the reason in words."""
    return _with_banner(_text_block(message, width), title)


def _text_block(message: str, width: int) -> np.ndarray:
    """`message` in red, wrapped to `width` px, on white."""
    import textwrap

    lines = textwrap.wrap(message, max(20, (width - 10) // 9)) or [""]  # 70 characters in 640 px
    img = np.full((40 + 22 * len(lines), width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(img, line, (10, 30 + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (180, 0, 0), 1, cv2.LINE_AA)
    return img


def _with_banner(img: np.ndarray, title: str) -> np.ndarray:
    banner = np.full((28, max(img.shape[1], 8 * len(title) + 20), 3), 255, np.uint8)
    cv2.putText(banner, title, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if banner.shape[1] > img.shape[1]:
        img = np.pad(img, ((0, 0), (0, banner.shape[1] - img.shape[1]), (0, 0)), constant_values=255)
    return np.concatenate([banner, img], axis=0)
