"""Synthetic H&E whole-slide images: tissue painting and pyramidal TIFF/SVS writing.

A slide is painted once at `PAINT_MPP` (0.5 um/px, "20x") in stain space and resized to its
level-0 resolution (0.25 um/px for the Aperio-style "40x" SVS, 0.5 um/px for the generic TIFF):

- tissue: one or two irregular blobs (a smooth random field thresholded, built at 8 um/px and
  interpolated, so edges are smooth at every resolution) with a few holes (lumina, >= 200 um across,
  bigger than `tissue.min_hole_area_um2`), on a near-white background;
- stroma: eosin (pink) with a fibrous texture (anisotropically blurred noise at a random angle);
- nuclei: haematoxylin (purple) ellipses scattered as an inhomogeneous Poisson process.

The planted slide signal (`risk_wsi`, a standard normal per patient) sets the nuclei:
density = `NUCLEI_PER_MM2 * exp(DENSITY_SLOPE * risk_wsi)` and radius =
`NUCLEUS_RADIUS_UM * exp(RADIUS_SLOPE * risk_wsi)`, so the purple fraction of tissue grows about
e^(0.8 * risk_wsi)-fold (~3% of tissue at risk -2, ~15% at 0, ~55% at +2), clearly visible in a 224-px
patch at 0.5 um/px. Everything else (blob shapes, stain intensity, fibre angle) is nuisance drawn
independently of risk. `nuclear_fraction` measures the signal back from pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from healnet.wsi.synthetic import write_pyramid

PAINT_MPP = 0.5  # um/px at which slides are painted
MASK_MPP = 8.0  # um/px of the tissue-shape field
# Every tissue piece is at least twice tissue.min_tissue_area_um2 (40,000 um^2 by default), so the
# median blur of detection cannot push a piece the QC picture shows under the detection threshold.
MIN_PIECE_UM2 = 80_000.0
BRIDGE_UM = 64.0  # tissue narrower than this may vanish in detection (tissue.median_blur_um 56)
NUCLEI_PER_MM2 = 4000.0  # nuclear density at risk_wsi = 0
DENSITY_SLOPE = 0.6  # d log(density) / d risk_wsi
NUCLEUS_RADIUS_UM = 3.3  # mean nuclear radius at risk_wsi = 0
RADIUS_SLOPE = 0.1  # d log(radius) / d risk_wsi
# Optical density (log10) per unit stain: eosin gives pink stroma (~236, 160, 195), haematoxylin
# purple-blue nuclei (~95, 55, 145). Mixing in OD space mimics how the two stains absorb light.
OD_EOSIN = -np.log10(np.array([236.0, 160.0, 195.0]) / 255.0).astype(np.float32)
OD_HAEM = -np.log10(np.array([95.0, 55.0, 145.0]) / 255.0).astype(np.float32)
OD_BACKGROUND = 0.012  # glass: RGB ~247
TILE = 256


@dataclass(frozen=True)
class SlideSpec:
    """One synthetic slide: where it goes, its format and the patient's slide-level risk."""

    slide_id: str
    path: Path
    fmt: str  # "svs" (Aperio, 40x) or "tiff" (generic tiled TIFF, 20x)
    mpp: float
    risk_wsi: float
    seed: tuple[int, ...]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise, rescaled to unit standard deviation."""
    field = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return field / max(float(field.std()), 1e-6)


def tissue_field(rng: np.random.Generator, width_um: float, height_um: float) -> np.ndarray:
    """A smooth field at MASK_MPP whose positive part is tissue (one or two blobs with holes)."""
    gw, gh = max(int(round(width_um / MASK_MPP)), 8), max(int(round(height_um / MASK_MPP)), 8)
    y, x = np.mgrid[0:gh, 0:gw].astype(np.float32)
    x *= MASK_MPP
    y *= MASK_MPP
    blobs = []
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = rng.uniform(0.35, 0.65) * width_um, rng.uniform(0.35, 0.65) * height_um
        # >= a quarter of the slide across: on the demo's 800 x 600 um slides a blob is >= 90,000 um^2,
        # well above tissue.min_tissue_area_um2 after the median blur (0.2 left some below it).
        rx, ry = rng.uniform(0.25, 0.3) * width_um, rng.uniform(0.25, 0.3) * height_um
        theta = rng.uniform(0, np.pi)
        dx, dy = x - cx, y - cy
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ry
        blobs.append(1.0 - (u * u + v * v))
    field = np.maximum.reduce(blobs) + 0.3 * _smooth_noise(rng, (gh, gw), sigma=60.0 / MASK_MPP)
    # Keep a glass margin so the tissue never touches the slide border.
    margin = np.minimum.reduce([x, y, width_um - x, height_um - y]) / (0.05 * min(width_um, height_um))
    field = _drop_small_pieces(np.minimum(field, margin - 1.0))
    # Holes: 1-3 lumina, 90-130 um in radius (area > tissue.min_hole_area_um2), each placed
    # where it fits inside the tissue with a >= 40 um rim, so it stays a hole, not a bite. The noise
    # can still thin the rim through; a hole that splits a piece or leaves one too small is not cut.
    wobble = 0.15 * _smooth_noise(rng, (gh, gw), sigma=20.0 / MASK_MPP)
    n_pieces = len(_pieces(field)[1])
    for _ in range(int(rng.integers(1, 4))):
        inside_um = cv2.distanceTransform((field > 0).astype(np.uint8), cv2.DIST_L2, 5) * MASK_MPP
        r = rng.uniform(90.0, 130.0)
        fits = np.argwhere(inside_um > r + 40.0)
        if not len(fits):
            break
        hy, hx = fits[rng.integers(len(fits))] * MASK_MPP
        d = np.sqrt((x - hx) ** 2 + (y - hy) ** 2) / r
        cut = np.minimum(field, (d - 1.0 + wobble) * 1.5)
        areas = _pieces(cut)[1]
        if len(areas) == n_pieces and areas.min() >= MIN_PIECE_UM2:
            field = cut
    return field


def _pieces(field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and areas (um^2) of the tissue pieces of a MASK_MPP field as detection sees them:
    the tissue (field > 0) opened by a disc of BRIDGE_UM, so a bridge thinner than the detection's
    median blur does not join two pieces."""
    k = int(BRIDGE_UM / MASK_MPP) | 1
    tissue = cv2.morphologyEx(
        (field > 0).astype(np.uint8), cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    )
    n, labels, stats, _ = cv2.connectedComponentsWithStats(tissue, connectivity=8)
    return labels, stats[1:n, cv2.CC_STAT_AREA].astype(np.float64) * MASK_MPP**2


def _drop_small_pieces(field: np.ndarray) -> np.ndarray:
    """The field with every tissue piece under MIN_PIECE_UM2 turned to glass (the largest piece
    stays, whatever its size: a slide always has tissue)."""
    labels, areas = _pieces(field)
    small = [i + 1 for i, a in enumerate(areas) if a < MIN_PIECE_UM2 and a < areas.max()]
    if small:
        field = np.where(np.isin(labels, small), np.minimum(field, -0.1), field)
    return field


def _fibres(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Stroma texture: noise blurred along a random direction (collagen fibres), unit std."""
    h, w = shape
    noise = rng.standard_normal((h, w)).astype(np.float32)
    streaks = cv2.GaussianBlur(noise, (0, 0), sigmaX=6.0, sigmaY=1.2)
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(0, 180)), 1.0)
    streaks = cv2.warpAffine(streaks, rot, (w, h), borderMode=cv2.BORDER_REFLECT)
    return streaks / max(float(streaks.std()), 1e-6)


def _nuclei(rng: np.random.Generator, tissue: np.ndarray, risk_wsi: float) -> np.ndarray:
    """Haematoxylin density (0..~1.2) at PAINT_MPP: filled ellipses, Poisson-scattered in tissue."""
    h, w = tissue.shape
    px_area_mm2 = (PAINT_MPP / 1000.0) ** 2
    density = NUCLEI_PER_MM2 * np.exp(DENSITY_SLOPE * risk_wsi)
    # Inhomogeneous Poisson process by thinning: local density varies +-30% between regions of a
    # slide (patch-level heterogeneity) but averages to `density` over its tissue, so the slide-level
    # signal is not diluted by where the dense regions happen to fall.
    coarse = (max(h // 64, 2), max(w // 64, 2))
    local = np.clip(1.0 + 0.3 * _smooth_noise(rng, coarse, sigma=2.0), 0.3, 1.7)
    tissue_coarse = cv2.resize(tissue, (coarse[1], coarse[0]), interpolation=cv2.INTER_AREA)
    local /= max(float((local * tissue_coarse).sum() / max(tissue_coarse.sum(), 1e-6)), 1e-6)
    peak = float(local.max())
    n_max = rng.poisson(peak * density * h * w * px_area_mm2)
    ys, xs = rng.uniform(0, h, n_max), rng.uniform(0, w, n_max)
    keep_p = (
        tissue[ys.astype(int), xs.astype(int)]
        * local[(ys * coarse[0] / h).astype(int), (xs * coarse[1] / w).astype(int)]
        / peak
    )
    keep = rng.uniform(size=n_max) < keep_p
    ys, xs = ys[keep], xs[keep]
    n = len(xs)
    radius_px = NUCLEUS_RADIUS_UM * np.exp(RADIUS_SLOPE * risk_wsi) / PAINT_MPP
    a = radius_px * rng.lognormal(0.0, 0.15, n)
    b = a * rng.uniform(0.6, 1.0, n)  # elongated, randomly oriented
    angle = rng.uniform(0, 180, n)
    stain = rng.uniform(0.8, 1.2, n)
    haem = np.zeros((h, w), np.float32)
    shift = 4  # sub-pixel precision: coordinates in 1/16 px
    scale = 1 << shift
    for i in range(n):
        cv2.ellipse(
            haem,
            (int(xs[i] * scale), int(ys[i] * scale)),
            (int(a[i] * scale), int(b[i] * scale)),
            float(angle[i]),
            0,
            360,
            float(stain[i]),
            thickness=-1,
            lineType=cv2.LINE_AA,
            shift=shift,
        )
    return haem


def stains_to_rgb(eosin: np.ndarray, haem: np.ndarray) -> np.ndarray:
    """Beer-Lambert: RGB = 255 * 10^-(eosin * OD_EOSIN + haem * OD_HAEM + background), uint8.

    Per channel with OpenCV (several times faster than broadcasting through numpy).
    """
    ln10 = float(np.log(10.0))
    channels = [
        cv2.exp(
            cv2.addWeighted(eosin, -ln10 * float(OD_EOSIN[c]), haem, -ln10 * float(OD_HAEM[c]), -ln10 * OD_BACKGROUND)
        )
        for c in range(3)
    ]
    return cv2.merge([cv2.convertScaleAbs(ch, alpha=255.0) for ch in channels])


def paint_slide(rng: np.random.Generator, width_um: float, height_um: float, risk_wsi: float, mpp: float) -> np.ndarray:
    """An H&E-like RGB image (uint8, H x W x 3) of `width_um` x `height_um` at `mpp` um/px."""
    w, h = int(round(width_um / PAINT_MPP)), int(round(height_um / PAINT_MPP))
    field = cv2.resize(tissue_field(rng, width_um, height_um), (w, h), interpolation=cv2.INTER_LINEAR)
    tissue = np.clip(field * 8.0, 0.0, 1.0)  # soft edge, ~ a few um wide
    eosin_gain, haem_gain = rng.uniform(0.85, 1.15), rng.uniform(0.95, 1.05)  # staining batch effect
    # Fibres at 1 um/px, interpolated: collagen bundles are wider than a pixel anyway.
    fibres = cv2.resize(_fibres(rng, (max(h // 2, 2), max(w // 2, 2))), (w, h), interpolation=cv2.INTER_LINEAR)
    eosin = tissue * eosin_gain * np.clip(0.8 + 0.3 * fibres, 0.25, 1.4)
    haem = _nuclei(rng, tissue, risk_wsi)
    haem = cv2.GaussianBlur(haem, (0, 0), 0.7) * haem_gain
    eosin *= 1.0 - 0.75 * np.clip(haem, 0.0, 1.0)  # nuclei displace stroma
    rgb = stains_to_rgb(eosin.astype(np.float32, copy=False), haem.astype(np.float32, copy=False))
    if abs(mpp - PAINT_MPP) > 1e-9:
        out_w, out_h = int(round(width_um / mpp)), int(round(height_um / mpp))
        interp = cv2.INTER_LINEAR if mpp < PAINT_MPP else cv2.INTER_AREA
        rgb = cv2.resize(rgb, (out_w, out_h), interpolation=interp)
    return rgb


def pyramid(image: np.ndarray, factor: int, min_side: int = 64) -> list[np.ndarray]:
    """Level 0 plus reduced levels (each `factor` times smaller) while the longer side >= min_side."""
    levels = [image]
    while True:
        h, w = levels[-1].shape[:2]
        nw, nh = w // factor, h // factor
        if max(nw, nh) < min_side or min(nw, nh) < 1:
            return levels
        levels.append(cv2.resize(levels[-1], (nw, nh), interpolation=cv2.INTER_AREA))


def write_slide(path: Path, image: np.ndarray, fmt: str, mpp: float, quality: int = 80) -> None:
    """Write a tiled, JPEG-compressed pyramidal TIFF that OpenSlide reads with its mpp.

    `svs`: Aperio layout (first-page ImageDescription 'Aperio Image Library ...|AppMag|MPP',
    pyramid by 4, as Aperio scanners do); `tiff`: generic tiled TIFF with resolution tags in
    pixels per centimetre and reduced levels marked subfiletype=1 (pyramid by 2).
    """
    if fmt not in ("svs", "tiff"):
        raise ValueError(f"unknown slide format {fmt!r} for {path}; use 'svs' or 'tiff'")
    levels = pyramid(image, factor=4 if fmt == "svs" else 2)
    write_pyramid(path, levels, mpp, "aperio" if fmt == "svs" else "generic", tile=TILE, quality=quality)


def nuclear_fraction(rgb: np.ndarray) -> float:
    """Fraction of tissue pixels that are nuclear (haematoxylin-dark): the planted slide signal.

    Tissue = not glass (darkest channel < 215); nuclear = red channel < 160 (haematoxylin absorbs
    red, eosin barely does). Works at any resolution from 0.25 to ~2 um/px.
    """
    rgb = np.asarray(rgb)[..., :3]
    tissue = rgb.min(axis=-1) < 215
    if not tissue.any():
        return float("nan")
    return float((tissue & (rgb[..., 0] < 160)).sum() / tissue.sum())
