"""Open a slide, resolve its level-0 resolution (mpp), choose pyramid levels and read regions.

Everything downstream works in level-0 pixels and micrometres; this module is the only place that
knows about pyramid levels, OpenSlide handles and vendor metadata.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from healnet import config

log = logging.getLogger(__name__)


class SlideError(RuntimeError):
    """A problem with one slide: recorded (on_slide_error: skip) or raised to the user (fail)."""

    def __init__(self, path: str | Path, reason: str, fix: str = ""):
        self.path = str(path)
        self.reason = reason
        self.fix = fix
        super().__init__(f"slide {path}: {reason}" + (f"; {fix}" if fix else ""))


MPP_FIX = (
    "add an `mpp` column (level-0 um/px) to the sample sheet for this slide, "
    "or set `cohorts.<name>.mpp` in the config for the whole cohort"
)


@dataclass(frozen=True)
class Mpp:
    """Level-0 micrometres per pixel and where the value came from (recorded in every output)."""

    x: float
    y: float
    source: str

    @property
    def mean(self) -> float:
        return (self.x + self.y) / 2


def _float(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


_UNIT_UM = {"centimeter": 1e4, "inch": 25400.0, "millimeter": 1e3, "micrometer": 1.0}


def resolve_mpp(
    properties: Mapping[str, str],
    path: str | Path,
    sheet_mpp: float | None = None,
    cohort_mpp: float | None = None,
    use_objective_power: bool = False,
    plausible: tuple[float, float] = (0.05, 20.0),
) -> Mpp:
    """Level-0 mpp in this order: OpenSlide's `openslide.mpp-x/y`, vendor keys (`aperio.MPP`, TIFF
    resolution with its unit), the sample sheet's `mpp`, the cohort override, and - only when the config
    allows it - 10 / objective power. Metadata outside `plausible` (e.g. the 72-dpi default of a plain
    TIFF, 352 um/px) is ignored with a warning. No mpp at all is a SlideError naming both fixes.
    """
    lo, hi = plausible

    def check(x: float | None, y: float | None, source: str) -> Mpp | None:
        if x is None:
            return None
        y = y or x
        if not (lo <= x <= hi and lo <= y <= hi):
            log.warning(
                "%s: ignoring implausible mpp %.4g x %.4g from %s (outside %s-%s um/px)", path, x, y, source, lo, hi
            )
            return None
        if abs(x - y) / max(x, y) > 0.02:
            log.warning("%s: anisotropic pixels (mpp %.4g x %.4g from %s)", path, x, y, source)
        return Mpp(x, y, source)

    candidates = [
        (
            lambda: (_float(properties.get("openslide.mpp-x")), _float(properties.get("openslide.mpp-y"))),
            "openslide.mpp-x/y",
        ),
        (lambda: (_float(properties.get("aperio.MPP")), None), "aperio.MPP"),
        (lambda: _tiff_resolution(properties), "tiff resolution"),
    ]
    for getter, source in candidates:
        mpp = check(*getter(), source)
        if mpp:
            return mpp
    for value, source in ((sheet_mpp, "sample sheet"), (cohort_mpp, "cohort override")):
        if _float(value) is not None:
            return Mpp(float(value), float(value), source)  # type: ignore[arg-type]
    power = _float(properties.get("openslide.objective-power"))
    if use_objective_power and power:
        mpp = 10.0 / power
        log.warning(
            "%s: no mpp in the metadata; using 10 / objective power %g = %.3f um/px "
            "(slide_reading.use_objective_power is on)",
            path,
            power,
            mpp,
        )
        return Mpp(mpp, mpp, f"objective power {power:g}")
    hint = (
        f" (objective power {power:g} is known; slide_reading.use_objective_power: true would use it)" if power else ""
    )
    raise SlideError(path, f"no mpp (um/px) in the slide metadata{hint}", MPP_FIX)


def _tiff_resolution(properties: Mapping[str, str]) -> tuple[float | None, float | None]:
    """um/px from tiff.X/YResolution (pixels per unit) and tiff.ResolutionUnit."""
    unit = _UNIT_UM.get(str(properties.get("tiff.ResolutionUnit", "")).lower())
    xres = _float(properties.get("tiff.XResolution"))
    yres = _float(properties.get("tiff.YResolution"))
    if unit is None or xres is None:
        return None, None
    return unit / xres, (unit / yres if yres else None)


def choose_level(downsamples: list[float] | tuple[float, ...], target_downsample: float, tolerance: float) -> int:
    """The pyramid level closest to, and at or finer than, `target_downsample` (a level up to
    `tolerance` coarser, relative, still counts: scanners round their downsamples)."""
    limit = target_downsample * (1 + tolerance)
    ok = [i for i, d in enumerate(downsamples) if d <= limit]
    if not ok:
        return int(np.argmin(downsamples))
    return max(ok, key=lambda i: downsamples[i])


def area_resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height) with area averaging (a box filter when shrinking), never nearest."""
    if (img.shape[1], img.shape[0]) == tuple(size):
        return img
    shrinking = size[0] <= img.shape[1] and size[1] <= img.shape[0]
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide RGBA -> RGB uint8, with transparent (unscanned) pixels as white background."""
    alpha = rgba[..., 3]
    rgb = rgba[..., :3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.float32) / 255.0
    return (rgb.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


class TiffTiles:
    """Direct tile decoding for tiled TIFF pyramids (Aperio SVS, generic TIFF): the raw tiles are read
    with tifffile and decoded by imagecodecs (libjpeg-turbo), about 6x faster than OpenSlide's
    read_region, which composites every tile through cairo. Only levels stored as 8-bit RGB tiles
    with a codec tifffile decodes are served here; `Slide` checks at open that a tile reads
    pixel-identical to OpenSlide and otherwise uses OpenSlide alone."""

    VENDORS = {"aperio", "generic-tiff"}
    CODECS = {1, 5, 7, 8, 32946}  # none, LZW, JPEG, deflate

    def __init__(self, path: str | Path, level_dimensions: tuple[tuple[int, int], ...]):
        import tifffile

        self.tif = tifffile.TiffFile(str(path))
        self.pages: dict[int, object] = {}
        tiled = [p for p in self.tif.pages if getattr(p, "is_tiled", False) and self._suitable(p)]
        for level, dims in enumerate(level_dimensions):
            page = next((p for p in tiled if (p.imagewidth, p.imagelength) == tuple(dims)), None)
            if page is not None:
                self.pages[level] = page

    @classmethod
    def _suitable(cls, page) -> bool:
        return (
            int(page.compression) in cls.CODECS
            and page.samplesperpixel == 3
            and page.bitspersample == 8
            and int(page.planarconfig) == 1
            and (int(page.photometric) == 2 or int(page.compression) == 7)
            and page.imagedepth == 1
        )

    def close(self) -> None:
        self.tif.close()

    def first_tile(self, level: int) -> tuple[int, int, int, int] | None:
        """(x, y, w, h) in level px of a non-empty tile near the middle (for the open-time check)."""
        page = self.pages[level]
        counts = np.asarray(page.databytecounts)
        if not counts.any():
            return None
        i = int(np.flatnonzero(counts)[len(np.flatnonzero(counts)) // 2])
        per_row = math.ceil(page.imagewidth / page.tilewidth)
        ty, tx = divmod(i, per_row)
        return tx * page.tilewidth, ty * page.tilelength, page.tilewidth, page.tilelength

    def raw_tile(self, level: int, i: int) -> bytes:
        """The stored (compressed) bytes of tile `i` of `level`; b"" for an empty tile."""
        page = self.pages[level]
        count = int(page.databytecounts[i])
        if not count:
            return b""
        fh = self.tif.filehandle
        fh.seek(int(page.dataoffsets[i]))
        data = fh.read(count)
        if len(data) != count:
            raise ValueError(f"tile {i} of level {level} is cut short ({len(data)} of {count} bytes)")
        return data

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) at level px (x, y); outside the image (or an empty tile) is white."""
        page = self.pages[level]
        tw, th, width, height = page.tilewidth, page.tilelength, page.imagewidth, page.imagelength
        per_row = math.ceil(width / tw)
        out = np.full((h, w, 3), 255, np.uint8)
        for ty in range(max(0, y // th), min(math.ceil(height / th), math.ceil((y + h) / th))):
            for tx in range(max(0, x // tw), min(per_row, math.ceil((x + w) / tw))):
                i = ty * per_row + tx
                data = self.raw_tile(level, i)
                if not data:
                    continue
                tile = page.decode(data, i, jpegtables=page.jpegtables)[0]
                if tile is None:
                    raise ValueError(f"tile {i} of level {level} could not be decoded")
                tile = tile.reshape(th, tw, -1)[..., :3]
                # intersection of the tile, the image and the requested window
                x0, y0 = max(x, tx * tw), max(y, ty * th)
                x1, y1 = min(x + w, (tx + 1) * tw, width), min(y + h, (ty + 1) * th, height)
                if x1 > x0 and y1 > y0:
                    out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[
                        y0 - ty * th : y1 - ty * th, x0 - tx * tw : x1 - tx * tw
                    ]
        return out


class Slide:
    """An opened slide with its resolved mpp. Not shareable across processes: each reader worker
    opens its own (`Slide(path, mpp=...)`)."""

    def __init__(self, path: str | Path, mpp: Mpp | None = None, cache_mb: int = 0, direct_tiles: bool = True):
        import openslide

        self.path = Path(path)
        if not self.path.exists():
            raise SlideError(path, "file not found", "fix the `path` column of the sample sheet")
        try:
            self.osr = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as err:
            raise SlideError(
                path,
                f"cannot be opened by OpenSlide ({type(err).__name__}: {err})",
                "check that the file is complete (re-download it) and in a format OpenSlide reads "
                "(https://openslide.org/formats/); convert it or drop it from the sample sheet",
            ) from None
        self.cache_mb = cache_mb
        if cache_mb:
            self.osr.set_cache(openslide.OpenSlideCache(cache_mb * 1024 * 1024))
        self.mpp = mpp
        self.properties = dict(self.osr.properties)
        self.dimensions: tuple[int, int] = self.osr.dimensions
        self.level_dimensions: tuple[tuple[int, int], ...] = self.osr.level_dimensions
        self.level_downsamples: tuple[float, ...] = self.osr.level_downsamples
        self.tiles: TiffTiles | None = self._direct_tiles() if direct_tiles else None

    def _direct_tiles(self) -> TiffTiles | None:
        """The fast tile reader, if this slide qualifies and a tile reads identical to OpenSlide."""
        if self.properties.get("openslide.vendor") not in TiffTiles.VENDORS:
            return None
        try:
            tiles = TiffTiles(self.path, self.level_dimensions)
            if 0 not in tiles.pages:
                tiles.close()
                return None
            box = tiles.first_tile(0)
            if box is not None:
                direct = tiles.read(0, *box)
                ref = rgba_to_rgb(np.asarray(self.osr.read_region(box[:2], 0, box[2:])))
                diff = np.abs(direct.astype(np.int16) - ref.astype(np.int16))
                if diff.max() > 8 or diff.mean() > 0.5:
                    log.warning(
                        "%s: direct tile decoding differs from OpenSlide (mean %.2f, max %d); using OpenSlide alone",
                        self.path,
                        diff.mean(),
                        diff.max(),
                    )
                    tiles.close()
                    return None
            return tiles
        except Exception as err:  # any doubt: OpenSlide reads everything, only slower
            log.debug("%s: no direct tile reading (%s: %s)", self.path, type(err).__name__, err)
            return None

    @classmethod
    def open(
        cls,
        path: str | Path,
        reading: config.SlideReading,
        sheet_mpp: float | None = None,
        cohort_mpp: float | None = None,
    ) -> Slide:
        """Open and resolve mpp (SlideError when the file is unreadable or has no known mpp)."""
        slide = cls(path)
        slide.mpp = resolve_mpp(
            slide.properties, path, sheet_mpp, cohort_mpp, reading.use_objective_power, tuple(reading.plausible_mpp)
        )  # type: ignore[arg-type]
        log.info(
            "%s: %d x %d px, %d levels, mpp %.4f (%s), vendor %s",
            path,
            *slide.dimensions,
            len(slide.level_dimensions),
            slide.mpp.mean,
            slide.mpp.source,
            slide.properties.get("openslide.vendor", "?"),
        )
        return slide

    def _reopen(self) -> None:
        """A fresh OpenSlide handle: after a read error OpenSlide refuses every later call on the handle,
        and a caller may still read the slide's good regions (extract.read_region_patches does)."""
        import openslide

        self.osr.close()
        self.osr = openslide.OpenSlide(str(self.path))
        if self.cache_mb:
            self.osr.set_cache(openslide.OpenSlideCache(self.cache_mb * 1024 * 1024))

    def close(self) -> None:
        if self.tiles is not None:
            self.tiles.close()
        self.osr.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tile_size(self, level: int) -> tuple[int, int]:
        p = self.properties
        w = int(p.get(f"openslide.level[{level}].tile-width", 0) or 0)
        h = int(p.get(f"openslide.level[{level}].tile-height", 0) or 0)
        return (w or 256, h or 256)

    def read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) of `size` at `level`, top-left `location` in level-0 px."""
        import openslide

        x, y, w, h = int(location[0]), int(location[1]), int(size[0]), int(size[1])
        try:
            if self.tiles is not None and level in self.tiles.pages:
                ds = self.level_downsamples[level]
                return self.tiles.read(level, int(round(x / ds)), int(round(y / ds)), w, h)
            region = self.osr.read_region((x, y), level, (w, h))
        except (openslide.OpenSlideError, ValueError, RuntimeError, OSError) as err:
            if isinstance(err, openslide.OpenSlideError):
                self._reopen()
            raise SlideError(
                self.path,
                f"read failed at level {level}, {location} ({type(err).__name__}: {err}): corrupt or "
                "truncated image data",
                "re-download or re-export the slide, or drop it from the sample sheet",
            ) from None
        return rgba_to_rgb(np.asarray(region))

    def image_at(
        self, mpp: float, tolerance: float = 0.1, max_strip_px: int = 64_000_000
    ) -> tuple[np.ndarray, tuple[float, float]]:
        """The whole slide at about `mpp` um/px (area-resampled from the finest sufficient level).
        Returns the RGB image and its scale (image px per level-0 px, x and y)."""
        assert self.mpp is not None
        target_ds = mpp / self.mpp.mean
        level = choose_level(self.level_downsamples, target_ds, tolerance)
        w0, h0 = self.dimensions
        out_w, out_h = max(1, round(w0 / target_ds)), max(1, round(h0 / target_ds))
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        # Read in horizontal strips so a slide without a low-resolution level does not need the whole
        # level in memory; strip edges fall on whole output rows, so the result is seamless.
        rows_per_strip = max(1, int(max_strip_px // max(1, lw) * out_h / lh))
        strips = []
        for r0 in range(0, out_h, rows_per_strip):
            r1 = min(out_h, r0 + rows_per_strip)
            y0, y1 = int(r0 * lh / out_h), min(lh, math.ceil(r1 * lh / out_h))
            strip = self.read((0, round(y0 * ds)), level, (lw, max(1, y1 - y0)))
            strips.append(area_resize(strip, (out_w, r1 - r0)))
        return np.concatenate(strips, axis=0), (out_w / w0, out_h / h0)
