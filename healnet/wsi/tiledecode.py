"""JPEG tiles decoded in batches on the extraction device (nvJPEG on CUDA): the GPU decode path.

On a GPU node the CPU path's readers, decoding JPEG tiles with libjpeg-turbo, are the limit (~250
patches/s per reader on an H100 node while the model runs 13,800; bench/README.md). Here the reader
processes only read each region's compressed tile bytes (a seek and a read per tile), and the main
process decodes them in one batch per region with `torchvision.io.decode_jpeg` on the device, lays
the tiles into the region, cuts the patches and area-resizes them there. A thread does this on its
own CUDA stream while the model runs on the default one, so reading (reader processes), decoding
(thread + stream) and the model overlap and the slowest stage sets the pace.

Only pyramid levels stored as plain 8-bit JPEG tiles (Aperio SVS, generic TIFF) qualify. Each tile
is made a self-contained stream (the TIFF's shared JPEGTables spliced in), and where the TIFF says
the samples are RGB but the stream does not say so (Aperio writes JPEG without a colour transform
and without a marker: a decoder would take it for YCbCr), an Adobe marker with transform 0 is put
in front. Before a slide is read this way, a tile decoded by this path on the device is compared
with the CPU path; a slide that fails keeps the CPU path (`features.decode: auto`).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from healnet import config
from healnet.wsi.extract import make_regions, worker_shares
from healnet.wsi.patches import PatchGeometry
from healnet.wsi.slide import Slide, SlideError, TiffTiles

log = logging.getLogger(__name__)

# APP14 "Adobe" segment, transform 0: the three components are R, G, B (no YCbCr conversion).
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
JPEG_TIFF_COMPRESSION = 7
SOF_SUPPORTED = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive Huffman (nvJPEG and libjpeg both)
# Open-time check of a tile against the CPU path: a wrong colour space or table differs by tens of
# levels on average; decoders (IDCT, chroma upsampling) by about one.
CHECK_MEAN, CHECK_MAX = 1.0, 48
READ_FIX = "re-download or re-export the slide, or drop it from the sample sheet"


def _segments(stream: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, payload) of the JPEG header segments after SOI, up to the scan (SOS) or EOI."""
    i = 2
    while i + 4 <= len(stream) and stream[i] == 0xFF:
        marker = stream[i + 1]
        if marker in (0xD9, 0xDA):
            return
        length = int.from_bytes(stream[i + 2 : i + 4], "big")
        yield marker, stream[i + 4 : i + 2 + length]
        i += 2 + length


@dataclass(frozen=True)
class JpegLevel:
    """How to turn the stored tiles of one pyramid level into self-contained JPEG streams."""

    level: int
    tile_w: int
    tile_h: int
    width: int
    height: int
    prefix: bytes  # SOI [+ Adobe RGB marker] + shared tables; a tile follows without its SOI

    def stream(self, tile: bytes) -> bytes:
        return self.prefix + tile[2:]


def jpeg_level(tiles: TiffTiles, level: int) -> tuple[JpegLevel | None, str]:
    """The level's JPEG layout, or None and why it does not qualify."""
    page = tiles.pages.get(level)
    if page is None:
        return None, "level not stored as tiles tifffile decodes (e.g. JPEG 2000)"
    if int(page.compression) != JPEG_TIFF_COMPRESSION:
        return None, f"tiles are not JPEG (TIFF compression {int(page.compression)})"
    box = tiles.first_tile(level)
    if box is None:
        return None, "no stored tile"
    tile = tiles.raw_tile(
        level, (box[1] // page.tilelength) * math.ceil(page.imagewidth / page.tilewidth) + box[0] // page.tilewidth
    )
    tables = bytes(page.jpegtables or b"\xff\xd8\xff\xd9")
    header = dict(_segments(tables[:-2] + tile[2:]))
    sof = [m for m in header if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC)]
    if len(sof) != 1 or sof[0] not in SOF_SUPPORTED or header[sof[0]][0] != 8:
        return None, f"JPEG process not decodable on the GPU (SOF {[hex(m) for m in sof]})"
    rgb = int(page.photometric) == 2 and 0xEE not in header and 0xE0 not in header  # no Adobe / JFIF marker
    prefix = b"\xff\xd8" + (ADOBE_RGB if rgb else b"") + tables[2:-2]
    return JpegLevel(level, page.tilewidth, page.tilelength, page.imagewidth, page.imagelength, prefix), ""


@dataclass
class RegionTiles:
    """One region's tiles as JPEG streams (empty where there is no tile: white) and its patches'
    top-left corners in the tile-aligned canvas of (ny x nx) tiles starting at tile (tx0, ty0).
    The streams travel as one byte array and their lengths, which the DataLoader moves from the
    readers through shared memory (a list of bytes objects would be pickled through a pipe)."""

    tx0: int
    ty0: int
    nx: int
    ny: int
    positions: np.ndarray  # (n, 2) canvas px
    data: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))  # the streams, concatenated
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ny * nx, row-major; 0: none

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return np.array([self.tx0, self.ty0, self.nx, self.ny], np.int64), self.positions, self.data, self.lengths

    @classmethod
    def from_arrays(cls, grid, positions, data, lengths) -> RegionTiles:
        tx0, ty0, nx, ny = (int(v) for v in grid)
        return cls(tx0, ty0, nx, ny, np.asarray(positions), np.asarray(data), np.asarray(lengths))

    def streams(self) -> list[torch.Tensor]:
        """Each tile's stream as a uint8 CPU tensor (a view; empty where there is no tile)."""
        return list(torch.from_numpy(self.data).split(self.lengths.tolist()))


def plan_region(coords: np.ndarray, geometry: PatchGeometry, layout: JpegLevel) -> RegionTiles:
    """The tiles under the patches at `coords` (level-0 top-left), placed exactly as the CPU path
    (`extract.read_region_patches` through `Slide.read`) places its region read."""
    ds, read = geometry.level_downsample, geometry.read_size
    x0, y0 = coords.min(axis=0)
    offsets = np.round((coords - (x0, y0)) / ds).astype(np.int64)
    lx, ly = int(round(int(x0) / ds)), int(round(int(y0) / ds))
    w, h = (offsets.max(axis=0) + read).tolist()
    tx0, ty0 = lx // layout.tile_w, ly // layout.tile_h
    nx = math.ceil((lx + w) / layout.tile_w) - tx0
    ny = math.ceil((ly + h) / layout.tile_h) - ty0
    positions = offsets + (lx - tx0 * layout.tile_w, ly - ty0 * layout.tile_h)
    return RegionTiles(tx0, ty0, nx, ny, positions)


def read_region_tiles(tiles: TiffTiles, coords: np.ndarray, geometry: PatchGeometry, layout: JpegLevel) -> RegionTiles:
    region = plan_region(coords, geometry, layout)
    per_row = math.ceil(layout.width / layout.tile_w)
    rows = math.ceil(layout.height / layout.tile_h)
    # Only tiles under a patch are read: the region's box may hold a corrupt tile whose patches were
    # dropped (healnet/wsi/integrity.py); a tile under no patch stays white and unused.
    used = np.zeros((region.ny, region.nx), bool)
    for x, y in region.positions.tolist():
        used[
            y // layout.tile_h : (y + geometry.read_size - 1) // layout.tile_h + 1,
            x // layout.tile_w : (x + geometry.read_size - 1) // layout.tile_w + 1,
        ] = True
    streams = []
    for ty in range(region.ty0, region.ty0 + region.ny):
        for tx in range(region.tx0, region.tx0 + region.nx):
            wanted = tx < per_row and ty < rows and used[ty - region.ty0, tx - region.tx0]
            raw = tiles.raw_tile(layout.level, ty * per_row + tx) if wanted else b""
            streams.append(layout.stream(raw) if raw else b"")
    region.data = np.frombuffer(bytearray().join(streams), np.uint8)  # writable: torch shares it as is
    region.lengths = np.array([len(s) for s in streams], np.int64)
    return region


def area_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of cv2.INTER_AREA shrinking `src` px to `dst`: each output pixel is the
    mean of the input interval it covers, partial pixels weighted by their overlap."""
    scale = src / dst
    lo = np.arange(dst)[:, None] * scale
    s = np.arange(src)[None, :]
    return (np.clip(np.minimum(lo + scale, s + 1) - np.maximum(lo, s), 0, None) / scale).astype(np.float32)


class RegionDecoder:
    """RegionTiles -> uint8 patches (n, size, size, 3) on `device`: batched decode, tiles laid into
    the region (white past the image edge), patches cut and resized as `slide.area_resize` does."""

    def __init__(self, layout: JpegLevel, geometry: PatchGeometry, device: torch.device):
        self.layout, self.device = layout, device
        self.read, self.size = geometry.read_size, geometry.patch_size
        self.weights = (
            torch.from_numpy(area_weights(self.read, self.size)).to(device) if self.read > self.size else None
        )
        self.white = torch.full((3, layout.tile_h, layout.tile_w), 255, dtype=torch.uint8, device=device)
        if device.type == "cuda":  # made on this stream, used on the decoding thread's: ready before
            torch.cuda.current_stream(device).synchronize()

    def decode(self, streams: list[torch.Tensor]) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg

        out = decode_jpeg(streams, mode=ImageReadMode.RGB, device=self.device)
        return out if isinstance(out, list) else [out]

    def __call__(self, region: RegionTiles) -> torch.Tensor:
        lay = self.layout
        th, tw = lay.tile_h, lay.tile_w
        streams = region.streams()
        images = iter(self.decode([s for s in streams if s.numel()]) if any(s.numel() for s in streams) else [])
        # Missing tiles are a shared white tile: one stack, no index upload (a blocking copy on CUDA).
        grid = torch.stack([next(images) if s.numel() else self.white for s in streams])
        if grid.shape[1:] != (3, th, tw):
            raise ValueError(f"level {lay.level}: a tile decodes to {tuple(grid.shape[1:])}, not (3, {th}, {tw})")
        canvas = (
            grid.view(region.ny, region.nx, 3, th, tw).permute(2, 0, 3, 1, 4).reshape(3, region.ny * th, region.nx * tw)
        )
        ex, ey = lay.width - region.tx0 * tw, lay.height - region.ty0 * th  # image edge in canvas px
        if ex < canvas.shape[2]:
            canvas[:, :, max(ex, 0) :] = 255
        if ey < canvas.shape[1]:
            canvas[:, max(ey, 0) :, :] = 255
        r = self.read
        crops = torch.stack([canvas[:, y : y + r, x : x + r] for x, y in region.positions.tolist()])
        return self.resize(crops).permute(0, 2, 3, 1)  # NHWC view, as the CPU readers deliver

    def resize(self, crops: torch.Tensor) -> torch.Tensor:
        if self.read == self.size:
            return crops
        x = crops.float()
        if self.weights is not None:  # shrink: separable box filter, (size, read) @ x @ (read, size)
            y = self.weights @ x @ self.weights.T
        else:  # enlarge (a slide slightly coarser than the target, within tolerance): bilinear, as cv2
            y = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return torch.floor(y + 0.5).clamp_(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class DecodePlan:
    """A slide level read through this path, and how its check tile compared with the CPU path."""

    layout: JpegLevel
    level_dimensions: tuple[tuple[int, int], ...]
    device: torch.device
    check_mean: float
    check_max: int

    def describe(self) -> str:
        return (
            f"{self.device.type} JPEG decoding (tile check vs CPU path: mean {self.check_mean:.3f}, "
            f"max {self.check_max})"
        )


def jpeg_plan(path: str, level: int, device: torch.device) -> tuple[DecodePlan | None, str]:
    """The decode plan for `level` of the slide, or None and why not: the level must be JPEG tiles
    and a tile decoded by this path on `device` must match the CPU path's pixels."""
    with Slide(path) as slide:
        vendor = slide.properties.get("openslide.vendor")
        if vendor not in TiffTiles.VENDORS:
            return None, f"vendor {vendor} (only Aperio SVS and generic tiled TIFF are read as tiles)"
        if slide.tiles is None or level not in slide.tiles.pages:
            return None, _not_tiles(path, slide.level_dimensions[level])
        layout, reason = jpeg_level(slide.tiles, level)
        if layout is None:
            return None, reason
        box = slide.tiles.first_tile(level)
        assert box is not None  # jpeg_level found one
        ds, side = slide.level_downsamples[level], min(box[2], box[3])
        coords = np.array([[round(box[0] * ds), round(box[1] * ds)]], np.int64)
        geo = PatchGeometry(0.0, 0.0, side, round(side * ds), level, ds, side)
        try:
            mine = RegionDecoder(layout, geo, device)(read_region_tiles(slide.tiles, coords, geo, layout))
        except RuntimeError as err:
            return None, f"{device.type} JPEG decoding failed on a tile ({err})"
        ref = slide.read(tuple(coords[0]), level, (side, side))
        diff = np.abs(mine[0].cpu().numpy().astype(np.int16) - ref.astype(np.int16))
        plan = DecodePlan(layout, slide.level_dimensions, device, float(diff.mean()), int(diff.max()))
    if plan.check_mean > CHECK_MEAN or plan.check_max > CHECK_MAX:
        return None, (
            f"a tile decoded on {device.type} differs from the CPU path (mean {plan.check_mean:.2f}, "
            f"max {plan.check_max}): colour space or tables not understood"
        )
    return plan, ""


def _not_tiles(path: str, dims: tuple[int, int]) -> str:
    """Why a level of an Aperio / generic TIFF is not served as tiles (for the log and errors)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = next((p for p in tif.pages if (p.imagewidth, p.imagelength) == tuple(dims)), None)
            if page is not None and int(page.compression) != JPEG_TIFF_COMPRESSION:
                return f"tiles are not JPEG (TIFF compression {int(page.compression)}, e.g. 33003/33005 JPEG 2000)"
    except Exception as err:  # only the message depends on it
        return f"not readable as TIFF ({type(err).__name__})"
    return "level not stored as 8-bit RGB tiles"


def choose_decode(path: str, level: int, params: config.Features, device: torch.device) -> DecodePlan | None:
    """`features.decode`: cpu -> None (readers decode); auto -> a plan when the model runs on CUDA and
    the slide qualifies, else None; gpu -> a plan or an error naming the fix."""
    if params.decode == "cpu" or (params.decode == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise RuntimeError(
            f"features.decode is 'gpu' but the features run on {device} (no CUDA device); "
            "use features.decode: auto or cpu"
        )
    plan, reason = jpeg_plan(path, level, device)
    if plan is None:
        if params.decode == "gpu":
            raise RuntimeError(
                f"features.decode is 'gpu' but slide {path} (level {level}) cannot be decoded on "
                f"the GPU: {reason}; use features.decode: auto (GPU where it applies, the CPU "
                "path for other slides) or cpu"
            )
        log.info("%s: CPU decoding (%s)", path, reason)
        return None
    log.info("%s: %s", path, plan.describe())
    return plan


class TileBytesReader(IterableDataset):
    """Yields (patch indices, RegionTiles, error) per region; each worker opens its own TIFF handle
    and reads a contiguous share of the regions (as `extract.RegionReader`, bytes instead of pixels)."""

    def __init__(self, path: str, coords: np.ndarray, geometry: PatchGeometry, region_patches: int, plan: DecodePlan):
        self.path, self.coords, self.geometry, self.plan = path, coords, geometry, plan
        lay = plan.layout
        self.regions = make_regions(coords, geometry, region_patches, (lay.tile_w, lay.tile_h))

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        n, k = (info.num_workers, info.id) if info else (1, 0)
        share = worker_shares(self.regions, n)[k]
        try:
            tiles = TiffTiles(self.path, self.plan.level_dimensions)
        except Exception as err:  # the plan was made from this file: it changed or went away
            yield np.zeros(0, np.int64), None, f"cannot be opened as TIFF ({type(err).__name__}: {err})"
            return
        # (indices, region arrays, error): arrays, so that the DataLoader passes them in shared memory
        try:
            for idx in share:
                try:
                    region = read_region_tiles(tiles, self.coords[idx], self.geometry, self.plan.layout)
                    yield idx, region.to_arrays(), None
                except (ValueError, OSError) as err:
                    yield idx, None, f"tile read failed at level {self.plan.layout.level} ({err})"
                    return
        finally:
            tiles.close()


def iter_device_patches(
    path: str, coords: np.ndarray, geometry: PatchGeometry, params: config.Features, plan: DecodePlan
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(indices, uint8 NHWC patches on `plan.device`) for every patch, a region at a time: reader
    processes read tile bytes, a thread decodes and cuts them (on a side stream on CUDA)."""
    dataset = TileBytesReader(str(path), coords, geometry, params.region_patches, plan)
    workers = min(params.num_workers, len(dataset.regions))
    loader = DataLoader(
        dataset, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None, in_order=False
    )
    decoder = RegionDecoder(plan.layout, geometry, plan.device)
    cuda = plan.device.type == "cuda"
    side = torch.cuda.Stream(plan.device) if cuda else None
    ready: queue.Queue = queue.Queue(maxsize=3)  # decoded regions waiting for the model
    stop = threading.Event()

    def produce() -> None:
        try:
            with torch.cuda.stream(side) if side is not None else nullcontext(), torch.inference_mode():
                for idx, region, error in loader:
                    if stop.is_set():
                        return
                    if error is not None:
                        raise SlideError(path, error, READ_FIX)
                    try:
                        patches = decoder(RegionTiles.from_arrays(*(np.asarray(a) for a in region)))
                    except (RuntimeError, ValueError) as err:
                        raise SlideError(path, f"JPEG tile decoding failed ({err})", READ_FIX) from None
                    event = None
                    if side is not None:
                        event = torch.cuda.Event()
                        event.record(side)
                    ready.put((np.asarray(idx), patches, event))
            ready.put(None)
        except BaseException as err:  # handed to the consuming thread, which raises it
            ready.put(err)

    thread = threading.Thread(target=produce, name="jpeg-decode", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            idx, patches, event = item
            if event is not None:  # the model's stream waits for the decode, and keeps the memory alive
                torch.cuda.current_stream(plan.device).wait_event(event)
                patches.record_stream(torch.cuda.current_stream(plan.device))
            yield idx, patches
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting to put
            try:
                ready.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()
