"""Fast patch reading and feature extraction.

Reading is what limits throughput, so:
- patches are read as regions of up to `region_patches` x `region_patches` grid patches, with region
  edges on the level's tile grid; one read per region decodes each tile once instead of once per patch
  that touches it, and the patches are cut from it in memory;
- tiled TIFF slides (Aperio SVS, generic TIFF) are decoded tile by tile with libjpeg-turbo, bypassing
  OpenSlide's slower compositing (`slide.TiffTiles`, checked pixel-identical at open); other formats
  go through OpenSlide;
- several reader processes (`num_workers`), each with its own slide handle and OpenSlide tile cache,
  each taking a contiguous share of the regions in raster order (tiles on region seams stay cached),
  shares cut to hold about the same number of patches; regions are taken from whichever reader has one
  ready (`in_order=False`), so a reader with denser tissue never stalls the others;
- patches leave the readers as uint8 through shared memory (4x less than float), are copied once
  into a (pinned) batch buffer, uploaded asynchronously and normalised on the device, under
  `inference_mode`, in channels_last, with bf16 autocast on CUDA;
- on CUDA the main process runs torch single-threaded while it feeds the GPU: its only CPU work is
  copying patches, and an intra-op thread pool would spin on the cores the readers need;
- with `features.decode` gpu/auto on CUDA, plain-JPEG slides skip the readers' decoding: they read
  tile bytes and the GPU decodes (`tiledecode`); the patches arrive on the device, batched there.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from healnet import config
from healnet.wsi.encoders import for_inference
from healnet.wsi.patches import PatchGeometry
from healnet.wsi.slide import Slide, SlideError, area_resize

log = logging.getLogger(__name__)
# Below this many patches the CPU encoder runs as it is (tracing its frozen graph takes 1-10 s).
FREEZE_MIN_PATCHES = 1000


def make_regions(
    coords: np.ndarray, geometry: PatchGeometry, region_patches: int, tile_size: tuple[int, int] = (256, 256)
) -> list[np.ndarray]:
    """Group patch indices into regions: blocks of the level's tile grid about `region_patches`
    patches wide, in raster order. Each region is read with one call."""
    ds = geometry.level_downsample
    bw = max(1, math.ceil(region_patches * geometry.read_size / tile_size[0])) * tile_size[0]
    bh = max(1, math.ceil(region_patches * geometry.read_size / tile_size[1])) * tile_size[1]
    bx = np.floor(coords[:, 0] / ds / bw).astype(np.int64)
    by = np.floor(coords[:, 1] / ds / bh).astype(np.int64)
    key = by * (int(bx.max(initial=0)) + 1) + bx
    order = np.lexsort((coords[:, 0], coords[:, 1], key))
    splits = np.flatnonzero(np.diff(key[order])) + 1
    return [a for a in np.split(order, splits) if len(a)]


def worker_shares(regions: list[np.ndarray], workers: int) -> list[list[np.ndarray]]:
    """Contiguous runs of `regions` (raster order), one per worker, each with about the same number of
    patches (regions at the tissue edge hold few patches, so equal region counts are not equal work)."""
    if not regions:
        return [[] for _ in range(workers)]
    ends = np.cumsum([len(r) for r in regions])
    bounds = [0]
    for target in ends[-1] * np.arange(1, workers) / workers:
        i = int(np.searchsorted(ends, target))  # the first region whose end reaches the target
        cut = i if i > 0 and target - ends[i - 1] < ends[i] - target else i + 1  # the nearer boundary
        bounds.append(min(max(cut, bounds[-1]), len(regions)))
    bounds.append(len(regions))
    return [regions[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def read_region_patches(slide: Slide, coords: np.ndarray, geometry: PatchGeometry) -> np.ndarray:
    """The patches at `coords` (level-0 top-left), uint8 (n, patch_size, patch_size, 3), read as one
    region at `geometry.level` and area-resampled to exactly `target_mpp`."""
    ds, read, size = geometry.level_downsample, geometry.read_size, geometry.patch_size
    x0, y0 = coords.min(axis=0)
    offsets = np.round((coords - (x0, y0)) / ds).astype(np.int64)  # patch positions in level px
    w, h = (offsets.max(axis=0) + read).tolist()
    # OpenSlide returns transparent pixels (white here) past the slide edge, so no clipping is needed.
    try:
        region = slide.read((int(x0), int(y0)), geometry.level, (int(w), int(h)))
    except SlideError:
        if len(coords) == 1:
            raise
        # The region's box may hold a tile under none of its patches that does not decode (a corrupt
        # tile whose patches were dropped, healnet/wsi/integrity.py): read patch by patch instead.
        return np.concatenate([read_region_patches(slide, coords[i : i + 1], geometry) for i in range(len(coords))])
    out = np.empty((len(coords), size, size, 3), np.uint8)
    for i, (ox, oy) in enumerate(offsets):
        out[i] = area_resize(region[oy : oy + read, ox : ox + read], (size, size))
    return out


class RegionReader(IterableDataset):
    """Yields (patch indices, uint8 patches) per region; each worker opens its own slide handle and
    reads a contiguous share of the regions. A SlideError is passed on as a value, because DataLoader
    re-raises worker exceptions as plain RuntimeErrors with a traceback for a message."""

    def __init__(
        self,
        path: str,
        coords: np.ndarray,
        geometry: PatchGeometry,
        region_patches: int,
        cache_mb: int,
        tile_size: tuple[int, int],
    ):
        self.path, self.coords, self.geometry, self.cache_mb = path, coords, geometry, cache_mb
        self.regions = make_regions(coords, geometry, region_patches, tile_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None, str | None]]:
        info = get_worker_info()
        n, k = (info.num_workers, info.id) if info else (1, 0)
        share = worker_shares(self.regions, n)[k]
        # No cv2.setNumThreads here: it deadlocks in a forked child once the parent has used OpenCV's
        # thread pool. DataLoader already limits torch to one thread per worker.
        try:
            slide = Slide(self.path, cache_mb=self.cache_mb)
        except SlideError as err:
            yield np.zeros(0, np.int64), None, err.reason
            return
        with slide:
            for idx in share:
                try:
                    yield idx, read_region_patches(slide, self.coords[idx], self.geometry), None
                except SlideError as err:
                    yield idx, None, err.reason
                    return


def iter_patches(
    path: str, coords: np.ndarray, geometry: PatchGeometry, params: config.Features
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices, uint8 patches) for every patch, in region batches, from `num_workers` readers."""
    with Slide(path) as probe:
        tile = probe.tile_size(geometry.level)
    dataset = RegionReader(str(path), coords, geometry, params.region_patches, params.cache_mb, tile)
    workers = min(params.num_workers, len(dataset.regions))
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=False,
        prefetch_factor=3 if workers else None,
        persistent_workers=False,
        in_order=False,
    )
    for idx, patches, error in loader:
        idx = np.asarray(idx)
        if error is not None:
            raise SlideError(path, error, "re-download or re-export the slide, or drop it from the sample sheet")
        yield idx, np.asarray(patches)


@contextmanager
def main_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads in this process set to `n` for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def extract_features(
    path: str,
    coords: np.ndarray,
    geometry: PatchGeometry,
    encoder: torch.nn.Module,
    params: config.Features,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    desc: str = "",
) -> tuple[np.ndarray, dict]:
    """Features (N, D) float32 in the order of `coords`, and timing figures (with where JPEG tiles
    were decoded: `features.decode`, see `tiledecode`)."""
    from healnet.wsi.tiledecode import choose_decode, iter_device_patches  # it imports this module

    n = len(coords)
    plan = choose_decode(path, geometry.level, params, device)
    encoder = encoder.to(device).to(memory_format=torch.channels_last).eval()
    # Tracing costs seconds once per process: worth it for a real slide, not for a few patches.
    model = for_inference(encoder, device, amp_dtype) if n >= FREEZE_MIN_PATCHES else encoder
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed batch shape: let cuDNN pick its fastest kernels
    t0 = time.perf_counter()
    # Patches are copied once, from the readers' shared memory into one of two batch buffers (pinned
    # on CUDA, so the upload is asynchronous; a buffer is refilled only after its upload finished).
    # Patches decoded on the device are batched there (stream order keeps a buffer until its use).
    # Outputs stay on the device until the end: the GPU never waits for a device-to-host copy and the
    # main process goes straight back to receiving patches.
    b, size = params.batch_size, geometry.patch_size
    upload = cuda and plan is None
    buffers = [
        torch.empty(
            (b, size, size, 3), dtype=torch.uint8, pin_memory=upload, device=device if plan is not None else "cpu"
        )
        for _ in range(2)
    ]
    uploaded: list[torch.cuda.Event | None] = [None, None]
    outputs: list[torch.Tensor] = []
    done: list[np.ndarray] = []
    batch_idx: list[np.ndarray] = []
    slot, fill = 0, 0

    def launch(count: int) -> None:
        nonlocal slot, fill, batch_idx
        # On CUDA a short last batch still runs at the full batch shape (its spare rows are stale and
        # dropped): with cudnn.benchmark every new shape is autotuned again, which cost ~0.3-1 s per
        # slide on an H100, more than the padding. On CPU the spare rows would cost real time.
        x = buffers[slot] if cuda else buffers[slot][:count]
        if upload:
            x = x.to(device, non_blocking=True)
            uploaded[slot] = torch.cuda.Event()
            uploaded[slot].record()
        with torch.inference_mode(), autocast:
            outputs.append(model(x)[:count])
        done.append(np.concatenate(batch_idx))
        batch_idx, slot, fill = [], 1 - slot, 0
        bar.update(count)

    with (
        tqdm(total=n, unit="patch", desc=desc or "features", mininterval=2.0, leave=False) as bar,
        main_threads(1 if cuda else torch.get_num_threads()),
    ):
        patches = (
            iter_patches(path, coords, geometry, params)
            if plan is None
            else iter_device_patches(path, coords, geometry, params, plan)
        )
        for idx, imgs in patches:
            pos = 0
            while pos < len(idx):
                if fill == 0 and uploaded[slot] is not None:
                    uploaded[slot].synchronize()
                take = min(b - fill, len(idx) - pos)
                buffers[slot][fill : fill + take] = torch.as_tensor(imgs[pos : pos + take])  # numpy or on the device
                batch_idx.append(idx[pos : pos + take])
                fill, pos = fill + take, pos + take
                if fill == b:
                    launch(b)
        if fill:
            launch(fill)
    out = np.zeros((n, encoder.feature_dim), np.float32)
    if outputs:
        out[np.concatenate(done)] = torch.cat(outputs).float().cpu().numpy()
    seconds = time.perf_counter() - t0
    rate = n / seconds if seconds > 0 else float("nan")
    decode = plan.describe() if plan else "cpu JPEG decoding in the readers"
    log.info(
        "%s: %d patches in %.1f s (%.1f patches/s) on %s%s, %s",
        desc or path,
        n,
        seconds,
        rate,
        device,
        f" with {amp_dtype} autocast" if amp_dtype else "",
        decode,
    )
    return out, {"seconds": round(seconds, 3), "patches_per_s": round(rate, 2), "decode": decode}
