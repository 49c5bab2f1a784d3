"""Tile integrity: corrupt compressed tiles that the decoder turns into pixels without an error.

OpenJPEG decodes a JPEG 2000 tile with random bytes written into it without complaint (the pixels come
out as coloured checkerboard noise), and libjpeg only warns on some corrupt JPEG data. Both formats
protect their entropy-coded data the same way, which makes a strict check cheap and free of false
alarms: inside the coded data a 0xFF byte is never followed by a marker code, except the few markers
the standard allows there (JPEG: stuffing 0x00, restart markers RST0-7; JPEG 2000: SOP, EPH, the next
tile-part's SOT). A tile whose coded data holds any other marker, or whose tile-part lengths do not
match its bytes, is corrupt. The check reads each compressed tile under the patches once (a few
microseconds per tile, no decoding), so it runs before any patch is read, whatever decoder (OpenSlide,
libjpeg-turbo, a GPU decoder) reads the pixels afterwards.

Checked: tiled TIFF pyramids (Aperio SVS, generic TIFF) with JPEG or JPEG 2000 tiles - the TCGA
formats. Other formats (NDPI, MIRAX, DICOM, ...) are recorded as unchecked.

Policy (`slide_reading.on_corrupt_tiles`): `drop` the patches that read a corrupt tile (the slide stays
`ok`, its attrs record the tiles), `fail` the slide, or `ignore` (no check).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from healnet.wsi.patches import PatchGeometry

log = logging.getLogger(__name__)

JPEG = {7}
JPEG2000 = {33003, 33005, 34712}  # Aperio YCbCr / RGB JPEG 2000, generic JPEG 2000
MAX_LISTED = 100  # tile boxes kept in the attrs (the count is always exact)


# --- codestream checks (pure functions on the bytes of one tile) ---------------------------------------

# A 0xFF byte followed by a code the coded data may not hold. JPEG entropy-coded data: only stuffing
# (0x00), restart markers RST0-7 and fill bytes (0xFF) may follow. JPEG 2000 packet data: only bytes
# below 0x90 (bit stuffing) and the SOP / EPH markers (0x91, 0x92). A regular expression scans in C.
_JPEG_BAD = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_J2K_BAD = re.compile(rb"\xff[\x90\x93-\xff]")


def _bad_markers(buf: bytes, start: int, end: int, bad: re.Pattern) -> int:
    """Number of forbidden markers in the coded data `buf[start:end]` (0 after one quick scan)."""
    return len(bad.findall(buf, start, end)) if bad.search(buf, start, end) else 0


def _u16(buf: bytes, pos: int) -> int:
    return buf[pos] << 8 | buf[pos + 1]


def check_jpeg(buf: bytes) -> str | None:
    """None if `buf` (one baseline JPEG tile, possibly abbreviated: tables in the TIFF) is well formed,
    else what is wrong. Progressive JPEG (several scans) is not checked."""
    n = len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return "no JPEG start-of-image marker"
    pos = 2
    while pos + 4 <= n:
        if buf[pos] != 0xFF:
            return f"no marker at byte {pos} of the JPEG header"
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in (0xC2, 0xC6, 0xCA, 0xCE):
            return None  # progressive: scans are separated by headers, not checked here
        if marker == 0xDA:  # start of scan: entropy-coded data up to the end-of-image marker
            start = pos + 2 + _u16(buf, pos + 2)
            if n - start < 2 or buf[-2] != 0xFF or buf[-1] != 0xD9:
                return "JPEG data does not end with the end-of-image marker (cut short or overwritten)"
            bad = _bad_markers(buf, start, n - 2, _JPEG_BAD)
            return f"{bad} invalid marker(s) inside the JPEG entropy-coded data" if bad else None
        pos += 2 + _u16(buf, pos + 2)
    return "JPEG header ends before the start of scan"


def check_jpeg2000(buf: bytes) -> str | None:
    """None if `buf` (one JPEG 2000 codestream, SOC ... EOC) is well formed: every tile-part's length
    (Psot) lands on the next SOT or on EOC, and no tile-part body holds a marker it cannot hold."""
    n = len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0x4F:
        return "no JPEG 2000 start-of-codestream marker"
    pos = 2
    while pos + 4 <= n and _u16(buf, pos) != 0xFF90:  # main header up to the first SOT
        if buf[pos] != 0xFF:
            return f"no marker at byte {pos} of the JPEG 2000 main header"
        pos += 2 + _u16(buf, pos + 2)
    parts = 0
    while pos + 12 <= n and _u16(buf, pos) == 0xFF90:
        psot = int.from_bytes(buf[pos + 6 : pos + 10], "big")
        end = n - 2 if psot == 0 else pos + psot  # Psot 0: the last tile-part runs up to EOC
        if end > n - 2:
            return f"tile-part {parts} is cut short ({psot} bytes announced, {n - pos} present)"
        sod = pos + 12
        while sod + 2 <= end and _u16(buf, sod) != 0xFF93:  # tile-part header up to SOD
            if buf[sod] != 0xFF or sod + 4 > end:
                return f"no marker at byte {sod} of tile-part {parts}'s header"
            sod += 2 + _u16(buf, sod + 2)
        if sod + 2 > end:
            return f"tile-part {parts} has no start-of-data marker"
        bad = _bad_markers(buf, sod + 2, end, _J2K_BAD)
        if bad:
            return f"{bad} invalid marker(s) inside the JPEG 2000 coded data of tile-part {parts}"
        pos, parts = end, parts + 1
    if parts == 0:
        return "no JPEG 2000 tile-part"
    if pos != n - 2 or _u16(buf, pos) != 0xFFD9:
        return f"the tile-part lengths do not end on the end-of-codestream marker (byte {pos} of {n})"
    return None


# --- the tiles under a set of patches -----------------------------------------------------------------


@dataclass
class TileCheck:
    """What the check found for one slide (recorded in the patch and feature store attrs)."""

    method: str  # "jpeg", "jpeg2000", or why nothing was checked
    level: int
    tiles_checked: int = 0
    corrupt: list[tuple[int, int, int, int, str]] = field(default_factory=list)  # level-0 x, y, w, h, why
    bad_patches: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # per patch

    def to_attrs(self) -> dict[str, Any]:
        return {
            "tile_check": self.method,
            "tiles_checked": self.tiles_checked,
            "corrupt_tiles": len(self.corrupt),
            "corrupt_tile_level": self.level,
            "corrupt_tile_boxes": [list(c[:4]) for c in self.corrupt[:MAX_LISTED]],
            "corrupt_tile_reasons": sorted({c[4] for c in self.corrupt})[:10],
            "patches_on_corrupt_tiles": int(self.bad_patches.sum()),
        }

    def summary(self) -> str:
        boxes = ", ".join(f"({x}, {y})" for x, y, *_ in self.corrupt[:5])
        more = f" and {len(self.corrupt) - 5} more" if len(self.corrupt) > 5 else ""
        return (
            f"{len(self.corrupt)} corrupt tile(s) at level {self.level} (level-0 top-left {boxes}{more}; "
            f"{self.corrupt[0][4]}) under {int(self.bad_patches.sum())} patch(es)"
        )


def _level_page(tif, dims: tuple[int, int]):
    """The tiled TIFF page of a pyramid level, by its size."""
    return next(
        (p for p in tif.pages if getattr(p, "is_tiled", False) and (p.imagewidth, p.imagelength) == tuple(dims)), None
    )


def check_tiles(
    path: str | Path, coords: np.ndarray, geometry: PatchGeometry, level_dimensions: tuple[tuple[int, int], ...]
) -> TileCheck:
    """Check every compressed tile that the patches at `coords` read (at `geometry.level`) and mark the
    patches that touch a corrupt one. Formats without a check give `method` = why, and no bad patch."""
    import tifffile

    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    result = TileCheck("unchecked", geometry.level, bad_patches=np.zeros(len(coords), bool))
    try:
        tif = tifffile.TiffFile(str(path))
    except (tifffile.TiffFileError, OSError, ValueError) as err:  # not a TIFF: DICOM, MIRAX, ...
        result.method = f"unchecked (not a TIFF: {type(err).__name__})"
        return result
    with tif:
        if tif.is_ndpi:
            result.method = "unchecked (NDPI: tiles are restart intervals of one JPEG)"
            return result
        page = _level_page(tif, level_dimensions[geometry.level])
        if page is None:
            result.method = f"unchecked (level {geometry.level} is not a tiled TIFF page)"
            return result
        compression = int(page.compression)
        if compression in JPEG:
            check, result.method = check_jpeg, "jpeg"
        elif compression in JPEG2000:
            check, result.method = check_jpeg2000, "jpeg2000"
        else:
            result.method = f"unchecked (compression {compression})"
            return result
        ds, read = geometry.level_downsample, geometry.read_size
        tw, th = page.tilewidth, page.tilelength
        per_row, rows = math.ceil(page.imagewidth / tw), math.ceil(page.imagelength / th)
        # The tile range each patch reads. Below level 0 the reader's rounding to level px may shift a
        # window by 1 px (extract.read_region_patches rounds region and offset separately): widen by 1.
        pad = 0 if ds == 1 else 1
        x0 = np.round(coords[:, 0] / ds).astype(np.int64) - pad
        y0 = np.round(coords[:, 1] / ds).astype(np.int64) - pad
        span = read - 1 + 2 * pad
        tx0, tx1 = np.clip(x0 // tw, 0, per_row - 1), np.clip((x0 + span) // tw, 0, per_row - 1)
        ty0, ty1 = np.clip(y0 // th, 0, rows - 1), np.clip((y0 + span) // th, 0, rows - 1)
        needed = sorted(
            {
                ty * per_row + tx
                for a, b, c, d in zip(tx0, tx1, ty0, ty1)
                for ty in range(c, d + 1)
                for tx in range(a, b + 1)
            }
        )
        offsets, counts = page.dataoffsets, page.databytecounts
        fd = tif.filehandle.fileno()
        bad_tiles: dict[int, str] = {}
        for i in needed:
            if not counts[i]:
                continue  # an empty tile reads as background; nothing to check
            buf = os.pread(fd, int(counts[i]), int(offsets[i]))
            why = "cut short (the file ends inside the tile)" if len(buf) != counts[i] else check(buf)
            if why:
                bad_tiles[i] = why
        result.tiles_checked = len(needed)
    for i, why in bad_tiles.items():
        ty, tx = divmod(i, per_row)
        result.corrupt.append((round(tx * tw * ds), round(ty * th * ds), round(tw * ds), round(th * ds), why))
        hit = (tx0 <= tx) & (tx <= tx1) & (ty0 <= ty) & (ty <= ty1)
        result.bad_patches |= hit
    if result.corrupt:
        log.warning("%s: %s", path, result.summary())
    return result
