"""Tissue detection (um-based parameters, holes, filters), GeoJSON round trip, and the patch grid on
the real CMU slide."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from healnet import config
from healnet.wsi import tissue as T
from healnet.wsi.patches import grid_fractions, patch_grid
from healnet.wsi.stages import run_patches, run_tissue
from healnet.wsi.store import read_patch_store
from healnet.wsi.synthetic import he_image


def scene(um_per_px: float, seed: int = 0) -> tuple[np.ndarray, dict]:
    """A 2.4 x 1.6 mm field: a tissue ellipse with a big hole (kept) and a small hole (filled), a speck
    (dropped), a green pen stroke and a black blob. Returns RGB and the expected areas in um^2."""
    w, h = round(2400 / um_per_px), round(1600 / um_per_px)
    s = 1 / um_per_px  # px per um
    tissue = np.zeros((h, w), np.uint8)
    cv2.ellipse(tissue, (round(900 * s), round(800 * s)), (round(640 * s), round(480 * s)), 0, 0, 360, 1, -1)
    cv2.circle(tissue, (round(900 * s), round(800 * s)), round(160 * s), 0, -1)  # hole: 80,400 um^2
    cv2.circle(tissue, (round(500 * s), round(800 * s)), round(40 * s), 0, -1)  # hole: 5,000 um^2 -> filled
    cv2.circle(tissue, (round(2100 * s), round(300 * s)), round(48 * s), 1, -1)  # speck: 7,200 um^2 -> dropped
    rgb = he_image(w, h, um_per_px, tissue.astype(bool), seed=seed)
    cv2.line(
        rgb,
        (round(1800 * s), round(1000 * s)),
        (round(2300 * s), round(1500 * s)),
        (30, 160, 60),
        max(1, round(60 * s)),
    )  # green pen
    cv2.circle(rgb, (round(2000 * s), round(700 * s)), round(120 * s), (15, 15, 15), -1)  # black dirt
    expected = {"tissue": np.pi * 640 * 480 - np.pi * 160**2, "hole": np.pi * 160**2}
    return rgb, expected


@pytest.mark.parametrize("um", [8.0, 4.0])
def test_detect_tissue_um_based(um):
    rgb, expected = scene(um)
    res = T.detect_tissue(rgb, (um, um), config.Tissue())
    assert len(res.polygons) == 1, "speck, pen stroke and dark blob must not become tissue"
    assert len(res.polygons[0]) == 2, "one hole kept (the small one is filled)"
    assert res.area_mm2 * 1e6 == pytest.approx(expected["tissue"], rel=0.05)
    hole_um2 = cv2.contourArea(res.polygons[0][1].astype(np.float32)) * um * um
    assert hole_um2 == pytest.approx(expected["hole"], rel=0.15)


def test_filters_can_be_switched_off():
    rgb, _ = scene(8.0)
    res = T.detect_tissue(rgb, (8.0, 8.0), config.Tissue(filter_pen=False, min_tissue_area_um2=0))
    assert len(res.polygons) >= 3  # now the speck and the pen stroke count too


def test_blank_glass_has_no_tissue():
    rgb = he_image(300, 200, 8.0, np.zeros((200, 300), bool))
    res = T.detect_tissue(rgb, (8.0, 8.0), config.Tissue())
    assert res.polygons == [] and res.area_mm2 == 0 and res.threshold >= config.Tissue().min_saturation


def test_geojson_round_trip_level0():
    rgb, _ = scene(8.0)
    res = T.detect_tissue(rgb, (8.0, 8.0), config.Tissue())
    scale = (1 / 32, 1 / 32)  # a 0.25 um/px slide seen at 8 um/px
    data = json.loads(json.dumps(T.tissue_geojson(res.polygons, scale, {"status": "ok"})))
    feat = data["features"][0]
    assert feat["geometry"]["type"] == "Polygon" and len(feat["geometry"]["coordinates"]) == 2
    assert feat["properties"]["classification"]["name"] == "Tissue"
    outer = np.array(feat["geometry"]["coordinates"][0])
    assert (outer[0] == outer[-1]).all()
    # level-0 px: the ellipse spans 1280 um = 5120 level-0 px at 0.25 um/px
    assert outer[:, 0].max() - outer[:, 0].min() == pytest.approx(5120, abs=64)
    back = T.mask_from_polygons(T.polygons_from_geojson(data, scale), res.mask.shape)
    assert (back == res.mask).mean() > 0.999


def test_grid_fraction_threshold():
    mask = np.zeros((100, 100), np.uint8)
    mask[:, :50] = 1  # left half tissue at scale 1/4 (level-0 400 x 400)
    coords, frac = grid_fractions(mask, (0.25, 0.25), (400, 400), 40)
    assert len(coords) == 100 and frac.reshape(10, 10)[0].tolist() == [1.0] * 5 + [0.0] * 5
    kept = patch_grid(mask, (0.25, 0.25), (400, 400), 40, 0.5)
    assert len(kept) == 50 and kept[:, 0].max() == 160 and (kept % 40 == 0).all()
    mask[:, 50:55] = 1  # cells of column 5 are now half tissue
    assert len(patch_grid(mask, (0.25, 0.25), (400, 400), 40, 0.5)) == 60
    assert len(patch_grid(mask, (0.25, 0.25), (400, 400), 40, 0.6)) == 50


def test_cmu_patch_grid_within_tissue(shared_data, tmp_path):
    """The real CMU slide (0.499 um/px): a grid of 224 level-0 px patches (= 224 px at 0.5 um/px) on
    tissue, identical to the grid drawn in the QC picture."""
    slide = shared_data / "slides/CMU-1-Small-Region.svs"
    reading, tissue, patching = config.SlideReading(), config.Tissue(), config.Patching()
    meta = run_tissue(str(slide), "cmu", tmp_path / "cmu.geojson", tmp_path / "cmu.png", reading, tissue, patching)
    assert meta["status"] == "ok" and meta["mpp"] == pytest.approx(0.499)
    assert 0.3 < meta["tissue_mm2"] < 1.2  # the slide is 1.1 x 1.5 mm, about a third of it tissue
    assert (tmp_path / "cmu.png").stat().st_size > 10_000
    attrs = run_patches(str(slide), "cmu", tmp_path / "cmu.geojson", tmp_path / "cmu.zarr", reading, patching)
    store = read_patch_store(tmp_path / "cmu.zarr")
    assert attrs["status"] == store.attrs["status"] == "ok"
    assert store.attrs["n_patches"] == len(store.coords) == meta["n_patches_preview"]
    assert (store.attrs["patch_size_level0"], store.attrs["read_size"], store.attrs["level"]) == (224, 224, 0)
    assert store.attrs["patch_size"] == 224 and store.attrs["target_mpp"] == 0.5
    c = store.coords
    assert len(c) > 20 and (c % 224 == 0).all() and (c[:, 0] + 224 <= 2220).all() and (c[:, 1] + 224 <= 2967).all()
    # every kept patch is at least half tissue by the GeoJSON polygons
    data = T.read_tissue_geojson(tmp_path / "cmu.geojson")
    scale = (0.125, 0.125)
    mask = T.mask_from_polygons(T.polygons_from_geojson(data, scale), (round(2967 / 8), round(2220 / 8)))
    fracs = [mask[round(y / 8) : round((y + 224) / 8), round(x / 8) : round((x + 224) / 8)].mean() for x, y in c]
    assert min(fracs) >= 0.45


# --- brightfield check -------------------------------------------------------------------------------


def test_fluorescence_slide_fails_brightfield_check(shared_data, tmp_path):
    """The real DAPI NDPI (nuclei on black): status failed with the measured reason, no polygons, the QC
    picture shows the dark thumbnail, the swatches and the reason; the patches stage passes it on."""
    slide = shared_data / "slides/test3-DAPI-2-387.ndpi"
    reading, tissue, patching = config.SlideReading(), config.Tissue(), config.Patching()
    meta = run_tissue(str(slide), "dapi", tmp_path / "d.geojson", tmp_path / "d.png", reading, tissue, patching)
    assert meta["status"] == "failed"
    assert meta["reason"].startswith(
        "not a brightfield slide: dark background (grey 10 where the slide is least "
        "coloured < tissue.min_background_grey 100"
    )
    assert meta["brightfield"]["background_grey"] == 10.0 and meta["mpp"] == pytest.approx(0.2282, abs=1e-4)
    data = T.read_tissue_geojson(tmp_path / "d.geojson")
    assert data["features"] == [] and data["healnet"]["status"] == "failed"
    qc = cv2.cvtColor(cv2.imread(str(tmp_path / "d.png")), cv2.COLOR_BGR2RGB)
    assert qc.shape[1] >= 480 and qc[40:400, 10:400].mean() < 40  # the thumbnail itself: black background
    assert (qc[-60:, :, 0] > 150).any() and (qc[-60:, :, 2] < 60).any()  # the red reason under it
    attrs = run_patches(str(slide), "dapi", tmp_path / "d.geojson", tmp_path / "d.zarr", reading, patching)
    assert attrs["status"] == "failed" and attrs["reason"] == meta["reason"]
    assert len(read_patch_store(tmp_path / "d.zarr").coords) == 0


def test_fluorescence_option_detects_signal_on_black(shared_data, tmp_path):
    """tissue.slide_type: fluorescence: no brightfield check; tissue is brightness above the dark
    background (triangle threshold). The DAPI section fills most of its 0.9 x 1.1 mm field."""
    slide = shared_data / "slides/test3-DAPI-2-387.ndpi"
    tissue = config.Tissue(slide_type="fluorescence")
    meta = run_tissue(
        str(slide), "dapi", tmp_path / "d.geojson", tmp_path / "d.png", config.SlideReading(), tissue, config.Patching()
    )
    assert meta["status"] == "ok" and "brightfield" not in meta
    assert 0.6 < meta["tissue_mm2"] < 0.9 and meta["n_patches_preview"] > 40


def test_fail_mode_stops_on_a_fluorescence_slide(shared_data, tmp_path):
    slide = shared_data / "slides/test3-DAPI-2-387.ndpi"
    with pytest.raises(
        RuntimeError,
        match=r"test3-DAPI-2-387.ndpi.*not a brightfield slide.*"
        r"tissue.slide_type: fluorescence",
    ):
        run_tissue(
            str(slide),
            "dapi",
            tmp_path / "d.geojson",
            tmp_path / "d.png",
            config.SlideReading(on_slide_error="fail"),
            config.Tissue(),
            config.Patching(),
        )
    assert not (tmp_path / "d.geojson").exists()


def test_brightfield_check_on_stain_colour():
    """Green tissue on light glass (FITC-like colours, or a slide read with swapped channels) fails the
    colour half of the check; H&E, a slide fully covered by tissue, and blank glass pass."""
    rgb, _ = scene(8.0)
    params = config.Tissue()
    good = T.check_brightfield(rgb, params)
    assert good.problem == "" and good.background_grey > 200 and 0.03 < good.offstain_fraction < 0.1  # the pen
    green = rgb[..., [1, 0, 1]]  # pink/purple -> green (glass stays grey)
    bad = T.check_brightfield(green, params)
    assert bad.background_grey > 200 and bad.offstain_fraction > 0.9
    assert bad.problem.startswith("stain colour far from H&E/IHC (") and "green/cyan" in bad.problem
    assert T.check_brightfield(green, config.Tissue(max_offstain_fraction=1.0)).problem == ""
    full = he_image(300, 200, 8.0, np.ones((200, 300), bool))
    assert T.check_brightfield(full, params).problem == ""
    assert T.check_brightfield(he_image(300, 200, 8.0, np.zeros((200, 300), bool)), params).problem == ""
    dark = T.check_brightfield(255 - rgb, params)  # an inverted (dark-field) image
    assert dark.problem.startswith("dark background")


def test_good_slide_passes_brightfield_check(shared_data, tmp_path):
    """The real H&E slides keep their results: the check passes with light glass."""
    meta = run_tissue(
        str(shared_data / "slides/TCGA-CR-7395-01A-01-TS1.svs"),
        "tcga",
        tmp_path / "t.geojson",
        tmp_path / "t.png",
        config.SlideReading(),
        config.Tissue(),
        config.Patching(),
        mpp=0.3,
    )
    assert meta["status"] == "ok" and meta["brightfield"]["background_grey"] == 255.0
    assert meta["brightfield"]["offstain_fraction"] == 0.0 and meta["tissue_mm2"] == pytest.approx(0.90, abs=0.01)
