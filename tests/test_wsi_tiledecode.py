"""The GPU decode path (`features.decode`), run on the CPU: compressed tiles read by the reader
processes, decoded in batches by torchvision, laid into regions, cut and area-resized with tensor ops,
must give the pixels of the CPU path (readers decoding with libjpeg-turbo through tifffile, itself
checked against OpenSlide at open). On CUDA the same code runs with nvJPEG (bench/bench_wsi.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from healnet import config
from healnet.wsi import tiledecode
from healnet.wsi.encoders import build_encoder
from healnet.wsi.extract import extract_features, iter_patches
from healnet.wsi.patches import PatchGeometry, patch_geometry
from healnet.wsi.slide import Slide, SlideError
from healnet.wsi.synthetic import he_image, write_slide
from healnet.wsi.tiledecode import (
    ADOBE_RGB,
    RegionDecoder,
    area_weights,
    choose_decode,
    iter_device_patches,
    jpeg_level,
    jpeg_plan,
)

pytestmark = pytest.mark.usefixtures("single_thread")
CPU = torch.device("cpu")
FEATURES = config.Features(batch_size=8, num_workers=2, region_patches=3)


def both_paths(path, coords, geo, features=FEATURES):
    """Patches by the CPU path and by the tile path decoding on the CPU, in `coords` order."""
    plan, why = jpeg_plan(str(path), geo.level, CPU)
    assert plan is not None, why
    out = {}
    for name, it in (
        ("cpu", iter_patches(str(path), coords, geo, features)),
        ("tiles", iter_device_patches(str(path), coords, geo, features, plan)),
    ):
        imgs = np.zeros((len(coords), geo.patch_size, geo.patch_size, 3), np.uint8)
        seen = np.zeros(len(coords), int)
        for idx, batch in it:
            imgs[idx] = np.asarray(batch)
            seen[idx] += 1
        assert (seen == 1).all(), name
        out[name] = imgs
    return out["cpu"], out["tiles"], plan


@pytest.fixture(scope="module")
def slide40(tmp_path_factory):
    img = he_image(2000, 1500, 0.25, seed=1)
    root = tmp_path_factory.mktemp("s40")
    return (
        write_slide(root / "a40.svs", img, 0.25, "aperio", (1, 4, 16)),
        write_slide(root / "g40.tiff", img, 0.25, "generic", (1, 2, 8)),
    )


def test_real_aperio_rgb_jpeg_with_tables_same_pixels(shared_data):
    """CMU-1 (Aperio): JPEG tiles without their tables (TIFF JPEGTables) and RGB samples with no
    marker saying so. Patches inside and across the right / bottom image edge (white there)."""
    path = shared_data / "slides/CMU-1-Small-Region.svs"
    geo = patch_geometry(0.499, (1.0,), config.Patching())
    coords = np.array(
        [[x, y] for y in range(0, 2967, 448) for x in range(0, 2220, 448)] + [[2100, 2850], [2000, 100], [100, 2800]],
        np.int64,
    )
    cpu, tiles, plan = both_paths(path, coords, geo)
    assert plan.layout.prefix.startswith(b"\xff\xd8" + ADOBE_RGB) and (plan.check_mean, plan.check_max) == (0, 0)
    diff = np.abs(cpu.astype(int) - tiles.astype(int))
    assert diff.max() == 0, (diff.max(), diff.mean())  # measured: identical (both libjpeg-turbo)
    corner = tiles[-3]  # 120 x 117 px of it inside the image (glass, ~243), the rest past the edge: white
    assert (corner[117:] == 255).all() and (corner[:, 120:] == 255).all() and corner[:117, :120].mean() < 246
    # Not vacuous: without the Adobe marker the decoder takes the RGB samples for YCbCr.
    with Slide(path) as slide:
        layout, _ = jpeg_level(slide.tiles, 0)
        wrong = tiledecode.JpegLevel(**{**layout.__dict__, "prefix": layout.prefix.replace(ADOBE_RGB, b"")})
        region = tiledecode.read_region_tiles(slide.tiles, coords[:1] + 896, geo, wrong)
        bad = RegionDecoder(wrong, geo, CPU)(region)[0].numpy().astype(int)
        assert np.abs(bad - slide.read(tuple(coords[0] + 896), 0, (224, 224)).astype(int)).mean() > 20


@pytest.mark.parametrize("which, level, read", [(0, 0, 448), (1, 1, 224)])
def test_synthetic_pyramids_same_pixels(slide40, which, level, read):
    """40x Aperio (YCbCr JPEG, level 0 read at 448 px and area-resized to 224 on the tensor side) and
    generic TIFF (a 2x level read at 224 px)."""
    path = slide40[which]
    with Slide(path) as slide:
        geo = patch_geometry(0.25, slide.level_downsamples, config.Patching())
    assert (geo.level, geo.read_size) == (level, read)
    coords = np.array([[x, y] for y in range(0, 1500, 448) for x in range(0, 2000, 448)], np.int64)
    cpu, tiles, _ = both_paths(path, coords, geo)
    assert np.abs(cpu.astype(int) - tiles.astype(int)).max() == 0


def test_area_resize_matches_cv2_for_fractional_scales():
    """The tensor-side resize is cv2.INTER_AREA (what the CPU path uses) also for non-integer
    factors (a 0.2527 um/px scan reads 443 px for a 224 px patch) and bilinear when enlarging."""
    rng = np.random.default_rng(0)
    for read in (443, 300, 448, 200):
        img = (rng.random((read, read, 3)) * 255).astype(np.uint8)
        img = cv2.GaussianBlur(img, (5, 5), 1.5)  # tissue-like: not pure noise
        geo = PatchGeometry(0.25, 0.5, 224, read, 0, 1.0, read)
        layout = tiledecode.JpegLevel(0, 256, 256, 4096, 4096, b"")
        mine = RegionDecoder(layout, geo, CPU).resize(torch.from_numpy(img).permute(2, 0, 1)[None])[0]
        mode = cv2.INTER_AREA if read > 224 else cv2.INTER_LINEAR
        ref = cv2.resize(img, (224, 224), interpolation=mode)
        diff = np.abs(mine.permute(1, 2, 0).numpy().astype(int) - ref.astype(int))
        # measured: shrinking identical but for float rounding, enlarging off by 1 on 12% (cv2's fixed point)
        assert diff.max() <= 1 and diff.mean() < (0.01 if read > 224 else 0.2), (read, diff.max(), diff.mean())
    w = area_weights(448, 224)
    np.testing.assert_allclose(w.sum(axis=1), 1, atol=1e-6)
    assert w[0, :2].tolist() == [0.5, 0.5] and w[0, 2:].sum() == 0


def test_features_through_the_tile_path_equal_the_cpu_path(slide40, monkeypatch):
    """extract_features with the tile path (patches batched on the decode device) gives the
    features of the CPU path, and records which path ran."""
    path = str(slide40[0])
    geo = patch_geometry(0.25, (1.0, 4.0, 16.0), config.Patching())
    coords = np.array([[x, y] for y in range(0, 1500, 448) for x in range(0, 2000, 448)], np.int64)
    encoder, _ = build_encoder("tiny", config.Encoder(model="resnet18", truncate_after="layer2", pretrained=False))
    ref, timing = extract_features(path, coords, geo, encoder, FEATURES, CPU, None)
    assert timing["decode"] == "cpu JPEG decoding in the readers"
    plan, _ = jpeg_plan(path, geo.level, CPU)
    monkeypatch.setattr(tiledecode, "choose_decode", lambda *a: plan)
    mine, timing = extract_features(path, coords, geo, encoder, FEATURES, CPU, None)
    assert timing["decode"].startswith("cpu JPEG decoding (tile check")
    np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-6)


def test_decode_switch(shared_data, slide40):
    cmu = str(shared_data / "slides/CMU-1-Small-Region.svs")
    assert choose_decode(cmu, 0, config.Features(decode="auto"), CPU) is None  # no CUDA: readers decode
    assert choose_decode(cmu, 0, config.Features(decode="cpu"), CPU) is None
    with pytest.raises(RuntimeError, match="decode is 'gpu' but the features run on cpu"):
        choose_decode(cmu, 0, config.Features(decode="gpu"), CPU)
    # JPEG 2000 (TCGA) and NDPI slides keep the CPU path, with the reason.
    plan, why = jpeg_plan(str(shared_data / "slides/TCGA-CR-7395-01A-01-TS1.svs"), 0, CPU)
    assert plan is None and "not JPEG (TIFF compression 33005" in why
    plan, why = jpeg_plan(str(shared_data / "slides/test3-DAPI-2-387.ndpi"), 0, CPU)
    assert plan is None and "hamamatsu" in why
    lossless = write_slide(
        slide40[0].parent / "lzw.tiff", he_image(512, 512, 0.25), 0.25, "generic", (1,), compression="zlib"
    )
    plan, why = jpeg_plan(str(lossless), 0, CPU)
    assert plan is None and "not JPEG" in why
    with pytest.raises(Exception, match="decode"):
        config.Features(decode="nvjpeg")


def test_corrupt_tile_is_a_slide_error(slide40, tmp_path):
    """A tile whose bytes are garbage stops the slide with a SlideError naming the decode failure."""
    import tifffile

    path = tmp_path / "bad.svs"
    path.write_bytes(slide40[0].read_bytes())
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        off, count = int(page.dataoffsets[5]), int(page.databytecounts[5])
    with open(path, "r+b") as fh:  # keep SOI and the headers' start, garble the rest of the tile
        fh.seek(off + 2)
        fh.write(bytes(np.random.default_rng(0).integers(0, 256, count - 2, dtype=np.uint8)))
    geo = patch_geometry(0.25, (1.0, 4.0, 16.0), config.Patching())
    coords = np.array([[x, y] for y in range(0, 1500, 448) for x in range(0, 2000, 448)], np.int64)
    plan, _ = jpeg_plan(str(slide40[0]), 0, CPU)  # the plan of the intact file, as if it broke later
    with pytest.raises(SlideError, match="JPEG tile decoding failed"):
        for _ in iter_device_patches(str(path), coords, geo, FEATURES, plan):
            pass
    # Patches on the corrupt tile dropped (as `healnet patches` does, issue 17): the region's box still
    # covers the tile, but only tiles under a patch are read, so the slide reads as on the CPU path.
    keep = ~((coords[:, 1] == 0) & np.isin(coords[:, 0], [896, 1344]))  # tile 5: x 1280-1536, y 0-256
    got = np.zeros((keep.sum(), 224, 224, 3), np.uint8)
    for idx, batch in iter_device_patches(str(path), coords[keep], geo, FEATURES, plan):
        got[idx] = batch.numpy()
    for idx, batch in iter_patches(str(slide40[0]), coords[keep], geo, FEATURES):  # the intact file
        assert np.array_equal(got[idx], batch)
