"""The patch grid: non-overlapping patches of exactly `target_mpp` um/px over the tissue mask.

A patch of `patch_size` px at `target_mpp` covers `patch_size * target_mpp` um, i.e.
`patch_size_level0 = round(patch_size * target_mpp / mpp)` level-0 px (448 at 0.25 um/px, 224 at
0.5). It is read at the pyramid level closest to and at or finer than the target, as
`read_size = round(patch_size_level0 / downsample)` px, and area-resampled to `patch_size`. The grid
starts at level-0 (0, 0), so the same tissue scanned at 0.25 and 0.5 um/px gives coordinates that
differ by exactly a factor of 2.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from healnet import config
from healnet.wsi.slide import SlideError, choose_level

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatchGeometry:
    """How a slide's patches are read (recorded in the patch and feature store attrs)."""

    mpp: float  # level-0 um/px
    target_mpp: float
    patch_size: int  # px at target_mpp (model input before any encoder resize)
    patch_size_level0: int  # level-0 px covered by one patch (grid step)
    level: int  # pyramid level read
    level_downsample: float
    read_size: int  # px read at `level`, resized to patch_size

    def to_dict(self) -> dict:
        return asdict(self)


def patch_geometry(
    mpp: float, downsamples: tuple[float, ...] | list[float], params: config.Patching, path: str = ""
) -> PatchGeometry:
    """Choose the level and sizes; a slide coarser than the target (beyond tolerance) is an error,
    never silently patched at another magnification."""
    target_ds = params.target_mpp / mpp
    if target_ds < 1 - params.mpp_tolerance:
        raise SlideError(
            path,
            f"level-0 resolution {mpp:.3f} um/px is coarser than the target {params.target_mpp} um/px "
            f"(beyond patching.mpp_tolerance {params.mpp_tolerance}); patches would mix magnifications",
            "drop the slide, or lower patching.target_mpp for the whole cohort",
        )
    level = choose_level(downsamples, target_ds, params.mpp_tolerance)
    ds = float(downsamples[level])
    p0 = max(1, round(params.patch_size * target_ds))
    read = max(1, round(p0 / ds))
    return PatchGeometry(mpp, params.target_mpp, params.patch_size, p0, level, ds, read)


def grid_fractions(
    mask: np.ndarray, scale: tuple[float, float], dimensions: tuple[int, int], patch_size_level0: int
) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 top-left corners of every whole grid patch inside the slide, and each one's tissue
    fraction measured on `mask` (image px = level-0 px * scale)."""
    w0, h0 = dimensions
    nx, ny = w0 // patch_size_level0, h0 // patch_size_level0
    xs = np.arange(nx, dtype=np.int64) * patch_size_level0
    ys = np.arange(ny, dtype=np.int64) * patch_size_level0
    integral = cv2.integral((mask > 0).astype(np.uint8))  # (h + 1, w + 1), int32

    def bounds(starts: np.ndarray, s: float, limit: int) -> tuple[np.ndarray, np.ndarray]:
        a = np.clip(np.round(starts * s).astype(np.int64), 0, limit)
        b = np.clip(np.round((starts + patch_size_level0) * s).astype(np.int64), 0, limit)
        return a, np.maximum(b, np.minimum(a + 1, limit))

    ax, bx = bounds(xs, scale[0], mask.shape[1])
    ay, by = bounds(ys, scale[1], mask.shape[0])
    inside = integral[by][:, bx] - integral[ay][:, bx] - integral[by][:, ax] + integral[ay][:, ax]
    area = np.maximum((by - ay)[:, None] * (bx - ax)[None, :], 1)
    frac = inside / area  # (ny, nx)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    coords = np.stack([xx.ravel(), yy.ravel()], axis=1)
    return coords, frac.ravel()


def patch_grid(
    mask: np.ndarray,
    scale: tuple[float, float],
    dimensions: tuple[int, int],
    patch_size_level0: int,
    min_tissue_fraction: float,
) -> np.ndarray:
    """Kept patches (N, 2) int64, level-0 top-left, row-major: tissue fraction >= the threshold
    (and > 0, so a threshold of 0 still skips pure background)."""
    coords, frac = grid_fractions(mask, scale, dimensions, patch_size_level0)
    keep = (frac >= min_tissue_fraction) & (frac > 0)
    return coords[keep].astype(np.int64)
