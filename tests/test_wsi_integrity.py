"""Tile integrity (healnet/wsi/integrity.py): the codestream checks never flag a good tile of the real
slides, and they catch the corruption the decoders pass over silently."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from healnet import config
from healnet.wsi.integrity import check_jpeg, check_jpeg2000, check_tiles
from healnet.wsi.patches import patch_geometry
from healnet.wsi.slide import Slide


def tiles(path, page=0):
    """The raw bytes of every tile of one TIFF page, and the page's tile grid."""
    with tifffile.TiffFile(path) as tif:
        p = tif.pages[page]
        fh = tif.filehandle
        out = []
        for offset, count in zip(p.dataoffsets, p.databytecounts):
            fh.seek(offset)
            out.append(fh.read(count))
        return out, (p.tilewidth, p.tilelength, -(-p.imagewidth // p.tilewidth))


def scramble(buf: bytes, rng, n: int = 4000) -> bytes:
    """`n` random bytes (at most half the tile) written over its middle, headers and end intact."""
    data = bytearray(buf)
    at, n = len(data) // 4, min(n, len(data) // 2)
    data[at : at + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    return bytes(data)


@pytest.mark.parametrize(
    "name, page, check",
    [
        ("TCGA-CR-7395-01A-01-TS1.svs", 0, check_jpeg2000),  # JPEG 2000 (33005), both levels
        ("TCGA-CR-7395-01A-01-TS1.svs", 2, check_jpeg2000),
        ("CMU-1-Small-Region.svs", 0, check_jpeg),  # JPEG with tables in the TIFF
    ],
)
def test_no_false_alarm_on_real_tiles(shared_data, name, page, check):
    bufs, _ = tiles(shared_data / "slides" / name, page)
    assert len(bufs) > 60 and [check(b) for b in bufs] == [None] * len(bufs)


def test_random_bytes_are_caught(shared_data):
    rng = np.random.default_rng(0)
    j2k, _ = tiles(shared_data / "slides/TCGA-CR-7395-01A-01-TS1.svs")
    jpeg, _ = tiles(shared_data / "slides/CMU-1-Small-Region.svs")
    for buf in j2k[100:120]:
        assert "invalid marker(s) inside the JPEG 2000 coded data of tile-part 0" in check_jpeg2000(scramble(buf, rng))
    for buf in jpeg[40:60]:
        assert "invalid marker(s) inside the JPEG entropy-coded data" in check_jpeg(scramble(buf, rng))
    # cut short, or a stray byte inserted: the tile-part length no longer lands on the end marker
    assert "cut short" in check_jpeg2000(j2k[100][:-500])
    assert "do not end on the end-of-codestream" in check_jpeg2000(j2k[100][:3000] + b"\x00" + j2k[100][3000:])
    assert "end-of-image marker" in check_jpeg(jpeg[40][:-100])
    assert check_jpeg2000(bytes(len(j2k[0]))) == "no JPEG 2000 start-of-codestream marker"


def test_direct_jpeg_decoder_is_silent_where_the_check_is_not(shared_data, tmp_path):
    """Why the check runs before reading: the fast tile decoder (libjpeg-turbo via imagecodecs) turns a
    scrambled JPEG tile into pixels without an error."""
    src = shared_data / "slides/CMU-1-Small-Region.svs"
    bufs, (tw, th, per_row) = tiles(src)
    i = 50
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        offset = tif.pages[0].dataoffsets[i]
    bad = scramble(bufs[i], np.random.default_rng(1))
    data[offset : offset + len(bad)] = bad
    (tmp_path / "c.svs").write_bytes(bytes(data))
    ty, tx = divmod(i, per_row)
    with Slide(tmp_path / "c.svs") as slide, Slide(src) as good:
        assert slide.tiles is not None
        garbage = slide.read((tx * tw, ty * th), 0, (tw, th)).astype(int)
        diff = np.abs(garbage - good.read((tx * tw, ty * th), 0, (tw, th)).astype(int)).mean()
        assert diff > 10  # noise, and no error
        geometry = patch_geometry(0.499, slide.level_downsamples, config.Patching())
        coords = np.array([[tx * tw, ty * th], [0, 0]])
        found = check_tiles(tmp_path / "c.svs", coords, geometry, slide.level_dimensions)
    assert found.method == "jpeg" and found.tiles_checked == 2 and found.bad_patches.tolist() == [True, False]
    assert found.corrupt[0][:4] == (tx * tw, ty * th, tw, th)
    assert found.to_attrs()["corrupt_tiles"] == 1 and found.to_attrs()["patches_on_corrupt_tiles"] == 1


def test_unchecked_formats_say_so(shared_data):
    slide = shared_data / "slides/test3-DAPI-2-387.ndpi"
    with Slide(slide) as s:
        geometry = patch_geometry(0.228, s.level_downsamples, config.Patching())
        found = check_tiles(slide, np.array([[0, 0]]), geometry, s.level_dimensions)
    assert found.method.startswith("unchecked (NDPI") and found.corrupt == [] and found.bad_patches.tolist() == [False]
