"""Slide reading: mpp resolution order, level choice, patch geometry, unreadable files (real ones)."""

from __future__ import annotations

import numpy as np
import pytest

from healnet import config
from healnet.wsi.patches import patch_geometry
from healnet.wsi.slide import Slide, SlideError, choose_level, resolve_mpp, rgba_to_rgb
from healnet.wsi.synthetic import he_image, write_slide


@pytest.mark.parametrize(
    "props, sheet, cohort, expected, source",
    [
        (
            {"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.25", "aperio.MPP": "0.5"},
            0.4,
            0.3,
            0.25,
            "openslide.mpp-x/y",
        ),
        ({"aperio.MPP": "0.5"}, 0.4, None, 0.5, "aperio.MPP"),
        ({"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"}, None, None, 0.25, "tiff resolution"),
        ({"tiff.XResolution": "50800", "tiff.ResolutionUnit": "inch"}, None, None, 0.5, "tiff resolution"),
        ({"tiff.ResolutionUnit": "inch"}, 0.26, 0.3, 0.26, "sample sheet"),  # unit without a value: unknown
        ({}, None, 0.3, 0.3, "cohort override"),
        # the 72-dpi default of a plain TIFF (352 um/px, as in openslide's boxes.tiff) is not a resolution
        (
            {"openslide.mpp-x": "352.78", "tiff.XResolution": "28.35", "tiff.ResolutionUnit": "centimeter"},
            0.5,
            None,
            0.5,
            "sample sheet",
        ),
    ],
)
def test_mpp_resolution_order(props, sheet, cohort, expected, source):
    mpp = resolve_mpp(props, "s.svs", sheet, cohort)
    assert mpp.mean == pytest.approx(expected) and mpp.source == source


def test_objective_power_only_when_allowed():
    props = {"openslide.objective-power": "40"}
    with pytest.raises(SlideError) as err:
        resolve_mpp(props, "x.svs")
    msg = str(err.value)
    assert "x.svs" in msg and "no mpp" in msg and "sample sheet" in msg and "cohorts.<name>.mpp" in msg
    assert "use_objective_power" in msg
    mpp = resolve_mpp(props, "x.svs", use_objective_power=True)
    assert mpp.mean == pytest.approx(0.25) and mpp.source == "objective power 40"


def test_real_slides_mpp(shared_data):
    cmu = Slide.open(shared_data / "slides/CMU-1-Small-Region.svs", config.SlideReading())
    assert cmu.mpp.mean == pytest.approx(0.499) and cmu.dimensions == (2220, 2967)
    ndpi = Slide.open(shared_data / "slides/test3-DAPI-2-387.ndpi", config.SlideReading())
    assert ndpi.mpp.mean == pytest.approx(0.2282, abs=1e-4)
    # ndpi at 0.228 um/px: level 1 (0.456) is the closest at-or-finer level for 0.5; 491 level-0 px
    geo = patch_geometry(ndpi.mpp.mean, ndpi.level_downsamples, config.Patching())
    assert (geo.level, geo.patch_size_level0, geo.read_size) == (1, 491, 246)


def test_no_mpp_real_tcga_slide(shared_data):
    path = shared_data / "slides/TCGA-CR-7395-01A-01-TS1.svs"
    with pytest.raises(SlideError) as err:
        Slide.open(path, config.SlideReading())
    assert str(path) in str(err.value) and "sample sheet" in err.value.fix and "cohorts.<name>.mpp" in err.value.fix
    slide = Slide.open(path, config.SlideReading(), sheet_mpp=0.25)
    assert slide.mpp.mean == 0.25 and slide.mpp.source == "sample sheet"


@pytest.mark.parametrize("name", ["synthetic/unopenable.tiff", "small_dicom_HE.dcm"])
def test_unopenable_real_files(shared_data, name):
    with pytest.raises(SlideError, match="cannot be opened by OpenSlide") as err:
        Slide(shared_data / "slides" / name)
    assert "re-download" in err.value.fix


def test_choose_level():
    ds = (1.0, 2.0005, 4.0, 16.0)
    assert choose_level(ds, 1.002, 0.1) == 0
    assert choose_level(ds, 2.0, 0.1) == 1  # 2.0005 is within tolerance
    assert choose_level(ds, 1.8, 0.1) == 0  # 2.0005 > 1.98: too coarse
    assert choose_level(ds, 3.9, 0.1) == 2
    assert choose_level(ds, 100.0, 0.1) == 3


def test_patch_geometry_exact_half_micron():
    p = config.Patching()
    g = patch_geometry(0.25, (1, 4, 16), p)
    assert (g.level, g.patch_size_level0, g.read_size) == (0, 448, 448)
    g = patch_geometry(0.25, (1, 2, 8), p)
    assert (g.level, g.patch_size_level0, g.read_size) == (1, 448, 224)
    g = patch_geometry(0.499, (1,), p)
    assert (g.level, g.patch_size_level0, g.read_size) == (0, 224, 224)
    with pytest.raises(SlideError, match="coarser than the target"):
        patch_geometry(1.0, (1, 4), p, "ten_x.svs")


def test_synthetic_writer_metadata(tmp_path):
    img = he_image(600, 400, 0.25)
    for vendor, name in (("aperio", "a.svs"), ("generic", "g.tiff")):
        slide = Slide.open(write_slide(tmp_path / name, img, 0.25, vendor, downsamples=(1, 4)), config.SlideReading())
        assert slide.properties["openslide.vendor"] == {"aperio": "aperio", "generic": "generic-tiff"}[vendor]
        assert slide.mpp.mean == pytest.approx(0.25) and slide.level_dimensions == ((600, 400), (150, 100))
    with pytest.raises(SlideError, match="no mpp"):
        Slide.open(write_slide(tmp_path / "n.tiff", img, None, "generic", downsamples=(1,)), config.SlideReading())


def test_transparent_pixels_become_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    rgb = rgba_to_rgb(rgba)
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[1, 1].tolist() == [255, 255, 255]


def test_direct_tiles_identical_to_openslide(shared_data, tmp_path):
    """The fast tile path reads exactly OpenSlide's pixels (edges and outside the image included) and
    is only used where it applies (not for the JPEG 2000 TCGA slide)."""
    img = he_image(700, 500, 0.25, seed=2)
    cases = [
        (shared_data / "slides/CMU-1-Small-Region.svs", 0),
        (write_slide(tmp_path / "g.tiff", img, 0.25, "generic", downsamples=(1, 2)), 1),
    ]
    for path, level in cases:
        fast, plain = Slide(path), Slide(path, direct_tiles=False)
        assert fast.tiles is not None and level in fast.tiles.pages and plain.tiles is None
        ds = int(fast.level_downsamples[level])
        w, h = fast.dimensions
        for loc, size in [
            ((100 * ds, 36 * ds), (300, 200)),
            ((-20 * ds, -10 * ds), (64, 48)),
            ((w - 50 * ds, h - 30 * ds), (120, 90)),
        ]:
            np.testing.assert_array_equal(fast.read(loc, level, size), plain.read(loc, level, size))
    assert Slide(shared_data / "slides/TCGA-CR-7395-01A-01-TS1.svs").tiles is None


def test_corrupt_jpeg_tile_is_a_slide_error(shared_data, tmp_path):
    import tifffile

    src = shared_data / "slides/CMU-1-Small-Region.svs"
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        offset, count = tif.pages[0].dataoffsets[60], tif.pages[0].databytecounts[60]
    data[offset + 20 : offset + count - 2] = bytes(count - 22)
    (tmp_path / "c.svs").write_bytes(bytes(data))
    for direct in (True, False):
        slide = Slide(tmp_path / "c.svs", direct_tiles=direct)
        assert slide.read((0, 0), 0, (240, 240)).shape == (240, 240, 3)  # other tiles are fine
        with pytest.raises(SlideError, match="read failed at level 0") as err:
            slide.read((0, 0), 0, slide.dimensions)
        assert "corrupt or truncated" in err.value.reason


def test_tissue_stage_records_where_the_mpp_came_from(tmp_path):
    """`healnet tissue --mpp` is the sample sheet's value, `--cohort-mpp` the cohort's: the slide's own
    metadata first, then the sheet, then the cohort, each recorded as the source."""
    import json

    from healnet.cli import main

    tissue = np.zeros((896, 1344), bool)
    tissue[224:672, 224:1120] = True
    path = write_slide(tmp_path / "nompp.tiff", he_image(1344, 896, 0.5, tissue), None, "generic", downsamples=(1, 4))

    def tissue_meta(name: str, sheet: str, cohort: str) -> dict:
        geojson = tmp_path / f"{name}.geojson"
        assert (
            main(
                [
                    "tissue",
                    "--slide",
                    str(path),
                    "--slide-id",
                    name,
                    "--mpp",
                    sheet,
                    "--cohort-mpp",
                    cohort,
                    "--geojson",
                    str(geojson),
                    "--qc",
                    str(tmp_path / f"{name}.png"),
                ]
            )
            == 0
        )
        return json.loads(geojson.read_text())["healnet"]

    cohort = tissue_meta("cohort", "", "0.5")
    assert (cohort["mpp"], cohort["mpp_source"], cohort["status"]) == (0.5, "cohort override", "ok")
    sheet = tissue_meta("sheet", "0.5", "0.4")
    assert (sheet["mpp"], sheet["mpp_source"]) == (0.5, "sample sheet")
    neither = tissue_meta("neither", "", "")
    assert neither["status"] == "failed" and "no mpp" in neither["reason"]
