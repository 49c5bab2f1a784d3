"""Every bad input of the issue, with real files, through the CLI: `skip` records the slide (outputs
with status failed / no_tissue, one row in slides.tsv), `fail` stops with the slide, cause and fix."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from healnet import config
from healnet.cli import main
from healnet.wsi.store import read_feature_store, read_patch_store
from healnet.wsi.synthetic import he_image, write_slide

TINY = config.Encoder(model="resnet18", truncate_after="layer2", pretrained=False).model_dump_json()
FEATS = config.Features(batch_size=8, num_workers=2).model_dump_json()
SKIP = config.SlideReading(on_slide_error="skip").model_dump_json()
FAIL = config.SlideReading(on_slide_error="fail").model_dump_json()


def stage(name: str, out, slide, slide_id: str, reading: str = SKIP, mpp: str = "") -> int:
    log = out / f"{slide_id}.{name}.log"
    common = ["--log", str(log), "--slide", str(slide), "--reading", reading]
    if name == "tissue":
        args = [
            "--slide-id",
            slide_id,
            "--mpp",
            mpp,
            "--geojson",
            str(out / f"{slide_id}.geojson"),
            "--qc",
            str(out / f"{slide_id}.png"),
        ]
    elif name == "patches":
        args = [
            "--slide-id",
            slide_id,
            "--tissue",
            str(out / f"{slide_id}.geojson"),
            "--output",
            str(out / f"{slide_id}_p.zarr"),
        ]
    else:
        args = [
            "--patches",
            str(out / f"{slide_id}_p.zarr"),
            "--output",
            str(out / f"{slide_id}.zarr"),
            "--encoder-name",
            "tiny",
            "--encoder",
            TINY,
            "--features",
            FEATS,
        ]
    return main([name, *common, *args])


def corrupt_tile(src, dst, level0_xy):
    """Copy `src` and zero the level-0 tile that holds level-0 pixel `level0_xy`."""
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        per_row = -(-page.imagewidth // page.tilewidth)
        i = (level0_xy[1] // page.tilelength) * per_row + level0_xy[0] // page.tilewidth
        offset, count = page.dataoffsets[i], page.databytecounts[i]
    data[offset : offset + count] = bytes(count)
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="module")
def slides(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    real = shared_data / "slides"
    cmu = (real / "CMU-1-Small-Region.svs").read_bytes()
    (d / "truncated.svs").write_bytes(cmu[: len(cmu) // 2])
    blank = he_image(1344, 896, 0.5, np.zeros((896, 1344), bool))
    tissue = np.zeros((896, 1344), bool)
    tissue[224:672, 224:1120] = True
    return {
        "unopenable": (real / "synthetic/unopenable.tiff", ""),
        "dicom": (real / "small_dicom_HE.dcm", ""),
        "truncated": (d / "truncated.svs", ""),
        "nompp": (real / "TCGA-CR-7395-01A-01-TS1.svs", ""),
        "blank": (write_slide(d / "blank.svs", blank, 0.5, downsamples=(1, 4)), ""),
        "good": (write_slide(d / "good.svs", he_image(1344, 896, 0.5, tissue), 0.5, downsamples=(1, 4)), ""),
        # the TCGA slide with an mpp from the sample sheet, and one corrupt level-0 tile under a patch
        "corrupt": (real / "TCGA-CR-7395-01A-01-TS1.svs", "0.3"),  # 0.3 um/px: patches come from level 0
    }


def test_bad_inputs_skip_and_qc_table(slides, tmp_path):
    out = tmp_path
    # The corrupt copy: find a patch of the intact slide, then break the tile under it.
    src, mpp = slides["corrupt"]
    assert stage("tissue", out, src, "probe", mpp=mpp) == 0 and stage("patches", out, src, "probe") == 0
    probe = read_patch_store(out / "probe_p.zarr").coords
    xy = probe[5]
    slides = {**slides, "corrupt": (corrupt_tile(src, out / "corrupt.svs", (xy[0] + 10, xy[1] + 10)), mpp)}

    for slide_id, (path, mpp) in slides.items():
        for name in ("tissue", "patches", "features"):
            assert stage(name, out, path, slide_id, mpp=mpp) == 0, (slide_id, name)

    expected = {
        "unopenable": ("failed", "cannot be opened by OpenSlide (OpenSlideError: Unsupported TIFF compression: 52479)"),
        "dicom": ("failed", "Couldn't get image flavor"),
        "truncated": ("failed", "cannot be opened by OpenSlide (OpenSlideUnsupportedFormatError"),
        "nompp": ("failed", "no mpp (um/px) in the slide metadata"),
        "blank": ("no_tissue", "no tissue found"),
        # the zeroed tile is found before reading; its patches are dropped (slide_reading.on_corrupt_tiles)
        "corrupt": ("ok", "2 patch(es) dropped: 1 corrupt tile(s) at level 0"),
        "good": ("ok", ""),
    }
    n_ok = {"good": 8, "corrupt": len(probe) - 2}
    for slide_id, (status, reason) in expected.items():
        geo = json.loads((out / f"{slide_id}.geojson").read_text())
        store = read_feature_store(out / f"{slide_id}.zarr")
        assert store.attrs["status"] == status and reason in store.attrs["reason"], (slide_id, store.attrs["reason"])
        assert (out / f"{slide_id}.png").stat().st_size > 500
        if status == "ok":
            assert len(store.features) == n_ok[slide_id] and store.features.shape[1] == 128
            assert len(geo["features"]) == 1
        else:
            assert store.features.shape == (0, 128) and store.coords.shape == (0, 2)
        for key in ("slide_id", "mpp", "patch_size_level0", "encoder", "feature_dim"):
            assert key in store.attrs, (slide_id, key)
    corrupt = read_feature_store(out / "corrupt.zarr")
    assert corrupt.attrs["mpp"] == 0.3 and corrupt.attrs["corrupt_tiles"] == 1
    assert corrupt.attrs["corrupt_tile_boxes"] == [[xy[0] // 256 * 256, xy[1] // 256 * 256, 256, 256]]
    assert "no JPEG 2000 start-of-codestream marker" in corrupt.attrs["corrupt_tile_reasons"][0]
    assert not (corrupt.coords == xy).all(axis=1).any() and (probe == xy).all(axis=1).any()
    assert json.loads((out / "corrupt.geojson").read_text())["healnet"]["status"] == "ok"

    sheet = pd.DataFrame(
        {
            "case_id": [f"C{i // 2}" for i in range(len(expected))],
            "slide_id": list(expected),
            "path": [str(slides[s][0]) for s in expected],
        }
    )
    sheet.to_csv(out / "sheet.tsv", sep="\t", index=False)
    stores = [str(out / f"{s}.zarr") for s in expected]
    assert (
        main(["slides-qc", "--sheet", str(out / "sheet.tsv"), "--stores", *stores, "--output", str(out / "slides.tsv")])
        == 0
    )
    table = pd.read_csv(out / "slides.tsv", sep="\t", keep_default_na=False)
    assert list(table.columns) == [
        "slide_id",
        "case_id",
        "status",
        "reason",
        "mpp",
        "tissue_mm2",
        "n_patches",
        "corrupt_tiles",
    ]
    assert table.set_index("slide_id")["status"].to_dict() == {k: v[0] for k, v in expected.items()}
    assert table.set_index("slide_id")["corrupt_tiles"].to_dict() == {k: int(k == "corrupt") for k in expected}
    good = table.set_index("slide_id").loc["good"]
    assert good["n_patches"] == 8 and float(good["mpp"]) == 0.5 and 0.08 < float(good["tissue_mm2"]) < 0.12
    assert table.set_index("slide_id").loc["nompp", "mpp"] == ""
    # a missing store is an error naming the slide
    assert (
        main(
            [
                "slides-qc",
                "--sheet",
                str(out / "sheet.tsv"),
                "--stores",
                *stores[:-1],
                "--output",
                str(out / "x.tsv"),
                "--log",
                str(out / "qc.log"),
            ]
        )
        == 1
    )
    assert "no feature store for slide(s) ['good']" in (out / "qc.log").read_text()


@pytest.mark.parametrize(
    "slide_id, words",
    [
        ("unopenable", ["unopenable.tiff", "cannot be opened", "drop it from the sample sheet"]),
        ("nompp", ["TCGA-CR-7395", "no mpp", "`mpp` column", "cohorts.<name>.mpp"]),
    ],
)
def test_fail_mode_stops_with_cause_and_fix(slides, tmp_path, slide_id, words):
    path, mpp = slides[slide_id]
    assert stage("tissue", tmp_path, path, slide_id, reading=FAIL, mpp=mpp) == 1
    log = (tmp_path / f"{slide_id}.tissue.log").read_text()
    for word in words + ["on_slide_error: skip"]:
        assert word in log
    assert "Traceback" not in log and not (tmp_path / f"{slide_id}.geojson").exists()


def test_fail_mode_during_extraction(slides, tmp_path):
    src, mpp = slides["corrupt"]
    assert stage("tissue", tmp_path, src, "c", mpp=mpp) == 0 and stage("patches", tmp_path, src, "c") == 0
    xy = read_patch_store(tmp_path / "c_p.zarr").coords[0]
    corrupt_tile(src, tmp_path / "c.svs", (xy[0] + 5, xy[1] + 5))
    assert stage("features", tmp_path, tmp_path / "c.svs", "c", reading=FAIL) == 1
    log = (tmp_path / "c.features.log").read_text()
    assert "read failed at level 0" in log and "OpenJPEG error" in log and not (tmp_path / "c.zarr").exists()


def scramble_tiles(src, dst, level0_points, seed=0):
    """Copy `src` and write 4,000 random bytes into the middle of the level-0 tile under each point (the
    issue's corrupt copy: OpenJPEG decodes such tiles to noise without an error). Returns the tiles'
    level-0 boxes."""
    rng = np.random.default_rng(seed)
    data = bytearray(src.read_bytes())
    boxes = []
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        tw, th = page.tilewidth, page.tilelength
        per_row = -(-page.imagewidth // tw)
        for x, y in level0_points:
            i = (y // th) * per_row + x // tw
            at = page.dataoffsets[i] + page.databytecounts[i] // 4
            data[at : at + 4000] = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
            boxes.append([x // tw * tw, y // th * th, tw, th])
    dst.write_bytes(bytes(data))
    return boxes


def test_scrambled_jpeg2000_tiles_drop_their_patches_or_fail_the_slide(slides, tmp_path):
    """The TCGA slide with 10 scrambled level-0 tiles under its patches: the tiles are found before any
    patch is read; `drop` keeps the slide with exactly the patches that read no scrambled tile, and
    records the tiles; `fail` records the slide as failed with the count and location."""
    out = tmp_path
    src, mpp = slides["corrupt"]
    assert stage("tissue", out, src, "probe", mpp=mpp) == 0 and stage("patches", out, src, "probe") == 0
    probe = read_patch_store(out / "probe_p.zarr")
    read = probe.attrs["read_size"]  # level 0 at 0.3 um/px: 373 px per patch
    points = [tuple(xy + 40) for xy in probe.coords[::7][:10]]
    boxes = scramble_tiles(src, out / "s.svs", points)
    assert len({tuple(b) for b in boxes}) == 10

    def reads(xy, box):  # the patch's read window overlaps the tile
        return xy[0] < box[0] + box[2] and box[0] < xy[0] + read and xy[1] < box[1] + box[3] and box[1] < xy[1] + read

    keep = [xy for xy in probe.coords.tolist() if not any(reads(xy, b) for b in boxes)]

    for name in ("tissue", "patches", "features"):
        assert stage(name, out, out / "s.svs", "s", mpp=mpp) == 0
    store = read_feature_store(out / "s.zarr")
    assert store.attrs["status"] == "ok" and store.coords.tolist() == keep
    assert len(store.features) == len(keep) == len(probe.coords) - store.attrs["patches_on_corrupt_tiles"]
    assert store.attrs["corrupt_tiles"] == 10 and store.attrs["tile_check"] == "jpeg2000"
    assert sorted(store.attrs["corrupt_tile_boxes"]) == sorted(boxes)
    assert store.attrs["reason"].startswith(
        f"{len(probe.coords) - len(keep)} patch(es) dropped: 10 corrupt tile(s) at level 0 (level-0 top-left ("
    )

    strict = config.SlideReading(on_slide_error="skip", on_corrupt_tiles="fail").model_dump_json()
    assert stage("patches", out, out / "s.svs", "s", reading=strict) == 0
    failed = read_patch_store(out / "s_p.zarr")
    assert failed.attrs["status"] == "failed" and len(failed.coords) == 0 and failed.attrs["corrupt_tiles"] == 10
    assert "10 corrupt tile(s) at level 0" in failed.attrs["reason"]
    assert "invalid marker(s) inside the JPEG 2000 coded data" in failed.attrs["reason"]


KILLED_WRITE = """
import os, sys, contextlib
import healnet.wsi.store as store
from healnet.cli import main

real = store.atomic_path

@contextlib.contextmanager
def killed(path):  # the store is complete in its temporary sibling; SIGKILL before the rename
    with real(path) as tmp:
        yield tmp
        os.kill(os.getpid(), 9)

store.atomic_path = killed
sys.exit(main(sys.argv[1:]))
"""


def test_interrupted_write_is_cleaned_at_the_next_run(slides, tmp_path):
    """`healnet patches` killed (SIGKILL) during its final write leaves only a hidden temporary sibling;
    the next run of the same output removes it and writes the store; other outputs' siblings stay."""
    import subprocess
    import sys

    slide, _ = slides["good"]
    assert stage("tissue", tmp_path, slide, "g") == 0
    args = [
        "patches",
        "--slide",
        str(slide),
        "--slide-id",
        "g",
        "--tissue",
        str(tmp_path / "g.geojson"),
        "--output",
        str(tmp_path / "g_p.zarr"),
    ]
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITE, *args], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".g_p.zarr.tmp-")]
    assert len(left) == 1 and (tmp_path / left[0] / "zarr.json").exists() and not (tmp_path / "g_p.zarr").exists()
    other = tmp_path / ".h_p.zarr.tmp-0123abcd"  # another output's write, maybe still running
    other.mkdir()

    assert main([*args, "--log", str(tmp_path / "again.log")]) == 0
    assert not any(p.name.startswith(".g_p.zarr.tmp-") for p in tmp_path.iterdir()) and other.exists()
    assert len(read_patch_store(tmp_path / "g_p.zarr").coords) == 8
    assert (
        f"removing {tmp_path / left[0]}, left by an interrupted write of g_p.zarr"
        in (tmp_path / "again.log").read_text()
    )
