"""Synthetic pyramidal slides for tests and benchmarks (real TIFF/SVS files that OpenSlide opens).

`he_image` paints H&E-like tissue (pink stroma, purple nuclei of a physical size) on glass at a given
um/px; `write_pyramid` writes image levels as a tiled JPEG (or lossless) pyramid, either as Aperio SVS
(mpp in the description, as scanners write it) or as a generic TIFF (mpp in the resolution tags); it
writes the demo cohort's slides too (healnet/demo/slides.py). `write_slide` builds the levels first.
`write_large_slide` writes slides of realistic size (e.g. 100k x 80k px) in seconds by reusing a few
pre-encoded level-0 tiles; its decode cost per tile is that of real content.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

Vendor = Literal["aperio", "generic"]


def he_image(width: int, height: int, mpp: float, tissue: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """RGB uint8 (height, width, 3): H&E-like texture where `tissue` (bool mask, any size; resized) is
    true, glass elsewhere. Nuclei are ~7 um across whatever the mpp."""
    rng = np.random.default_rng(seed)
    if tissue is None:
        tissue = np.zeros((height, width), bool)
        tissue[height // 5 : 4 * height // 5, width // 6 : 5 * width // 6] = True
    mask = cv2.resize(tissue.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    img = np.empty((height, width, 3), np.float32)
    img[:] = (238, 236, 240)
    stroma = np.array([226, 150, 190], np.float32)
    # Low-frequency stain variation at ~50 um.
    coarse = rng.normal(0, 1, (max(2, int(height * mpp / 50)), max(2, int(width * mpp / 50)), 3)).astype(np.float32)
    coarse = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) * 12
    img[mask] = stroma + coarse[mask]
    # Nuclei: dark purple discs, density ~1 per 150 um^2 of tissue.
    n = int(mask.sum() * mpp * mpp / 150)
    ys, xs = np.nonzero(mask)
    if n and len(xs):
        pick = rng.integers(0, len(xs), n)
        r = max(1, round(3.5 / mpp))
        nuclei = np.zeros((height, width), np.uint8)
        for x, y in zip(xs[pick], ys[pick]):
            cv2.circle(nuclei, (int(x), int(y)), r, 1, -1)
        img[nuclei.astype(bool)] = (95, 60, 150)
    img += rng.normal(0, 3, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _pyramid(rgb: np.ndarray, downsamples: tuple[int, ...]) -> list[np.ndarray]:
    h, w = rgb.shape[:2]
    return [
        rgb if d == 1 else cv2.resize(rgb, (max(1, w // d), max(1, h // d)), interpolation=cv2.INTER_AREA)
        for d in downsamples
    ]


def aperio_description(width: int, height: int, tile: int, quality: int, mpp: float | None, name: str) -> str:
    """The first-page ImageDescription an Aperio scanner writes; OpenSlide reads vendor `aperio`, the
    mpp (`MPP`) and the objective power (`AppMag`) from it."""
    size = f"{width}x{height}"
    desc = f"Aperio Image Library v12.0.15 \r\n{size} [0,0 {size}] ({tile}x{tile}) JPEG/RGB Q={quality}"
    if mpp:
        desc += f"|AppMag = {int(round(10 / mpp))}|MPP = {mpp}"
    return f"{desc}|Filename = {name}"


def page_options(
    vendor: Vendor,
    mpp: float | None,
    level0_shape: tuple[int, int],
    level_width: int,
    tile: int,
    quality: int,
    compression: str,
    first: bool,
    name: str,
) -> dict:
    """tifffile `write` options of one pyramid level: tiles, compression, reduced-level flag and the
    mpp (Aperio: in the first page's description; generic: resolution tags of each level)."""
    kw: dict = {
        "tile": (tile, tile),
        "photometric": "rgb",
        "metadata": None,
        "software": False,
        "subfiletype": 0 if first else 1,
    }
    if compression == "jpeg":
        kw["compression"] = "jpeg"
        kw["compressionargs"] = {"level": quality}
    elif compression != "none":
        kw["compression"] = compression
    h, w = level0_shape
    if vendor == "aperio":
        if first:
            kw["description"] = aperio_description(w, h, tile, quality, mpp, name)
    elif mpp:
        ppcm = 1e4 / (mpp * (w / level_width))  # pixels per cm at this level
        kw["resolution"] = (ppcm, ppcm)
        kw["resolutionunit"] = "CENTIMETER"
    return kw


def write_pyramid(
    path: str | Path,
    levels: list[np.ndarray],
    mpp: float | None,
    vendor: Vendor = "aperio",
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
) -> Path:
    """Write RGB `levels` (level 0 first, then reduced levels) as a tiled pyramidal TIFF that OpenSlide
    reads with `mpp` (None: no resolution metadata at all)."""
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = levels[0].shape[:2]
    with tifffile.TiffWriter(path, bigtiff=levels[0].nbytes > 2**31) as tif:
        for i, level in enumerate(levels):
            tif.write(
                level, **page_options(vendor, mpp, shape, level.shape[1], tile, quality, compression, i == 0, path.stem)
            )
    return path


def write_slide(
    path: str | Path,
    rgb: np.ndarray,
    mpp: float | None,
    vendor: Vendor = "aperio",
    downsamples: tuple[int, ...] = (1, 4, 16),
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
) -> Path:
    """Write `rgb` as a tiled pyramid (levels at `downsamples`) that OpenSlide reads with `mpp`
    (None: no resolution metadata at all)."""
    return write_pyramid(path, _pyramid(rgb, downsamples), mpp, vendor, tile, compression, quality)


def write_large_slide(
    path: str | Path,
    width: int,
    height: int,
    mpp: float,
    tissue: np.ndarray | None = None,
    downsamples: tuple[int, ...] = (1, 4, 16, 64),
    tile: int = 256,
    quality: int = 90,
    n_variants: int = 16,
    seed: int = 0,
) -> Path:
    """A slide of realistic size in seconds and little memory: every level is tiled from
    `n_variants` pre-encoded tissue tiles (painted at that level's um/px) and one glass tile, placed
    by `tissue` (bool, any size; default an ellipse). Decoding a tile costs what real content costs."""
    import imagecodecs
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tissue is None:
        tissue = np.zeros((64, 64), np.uint8)
        cv2.ellipse(tissue, (32, 32), (26, 20), 15, 0, 360, 1, -1)
    tissue = np.asarray(tissue).astype(np.uint8)
    rng = np.random.default_rng(seed)
    full = np.ones((tile, tile), bool)

    def encode(img: np.ndarray) -> bytes:
        return imagecodecs.jpeg_encode(img, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2))

    def tiles(w: int, h: int, level_mpp: float) -> Iterator[bytes]:
        nx, ny = math.ceil(w / tile), math.ceil(h / tile)
        on = cv2.resize(tissue, (nx, ny), interpolation=cv2.INTER_NEAREST).astype(bool)
        variants = [
            encode(he_image(tile, tile, level_mpp, full, seed=int(rng.integers(1 << 30)))) for _ in range(n_variants)
        ]
        glass = encode(he_image(tile, tile, level_mpp, ~full, seed=seed))
        choice = rng.integers(0, n_variants, (ny, nx))
        for ty in range(ny):
            for tx in range(nx):
                yield variants[choice[ty, tx]] if on[ty, tx] else glass

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, d in enumerate(downsamples):
            w, h = max(1, width // d), max(1, height // d)
            kw = page_options("aperio", mpp, (height, width), w, tile, quality, "jpeg", i == 0, path.stem)
            tif.write(tiles(w, h, mpp * d), shape=(h, w, 3), dtype=np.uint8, **kw)
    return path
