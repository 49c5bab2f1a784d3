"""Feature extraction: exact 0.5 um/px from 0.25 and 0.5 um/px scans, region reads, ResNet50-trunc
against a direct timm forward, and the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from healnet import config
from healnet.wsi.encoders import build_encoder, state_dict_sha256
from healnet.wsi.extract import extract_features, iter_patches, make_regions, read_region_patches, worker_shares
from healnet.wsi.patches import PatchGeometry, patch_geometry
from healnet.wsi.slide import Slide
from healnet.wsi.stages import run_features, run_patches, run_tissue
from healnet.wsi.store import read_feature_store, read_patch_store, write_patch_store
from healnet.wsi.synthetic import he_image, write_slide

# A small random CNN keeps these tests fast; only the ResNet50 test below uses the real architecture.
TINY = config.Encoder(model="resnet18", truncate_after="layer2", pretrained=False)
FEATURES = config.Features(batch_size=16, num_workers=2, region_patches=2)


def run_slide(path, slide_id, out, encoder=TINY, features=FEATURES, mpp=None):
    reading, patching = config.SlideReading(), config.Patching()
    run_tissue(
        str(path),
        slide_id,
        out / f"{slide_id}.geojson",
        out / f"{slide_id}.png",
        reading,
        config.Tissue(),
        patching,
        mpp,
    )
    run_patches(str(path), slide_id, out / f"{slide_id}.geojson", out / f"{slide_id}_p.zarr", reading, patching)
    run_features(str(path), out / f"{slide_id}_p.zarr", out / f"{slide_id}.zarr", "tiny", encoder, features, reading)
    return read_feature_store(out / f"{slide_id}.zarr")


def test_same_tissue_at_025_and_05_gives_same_patches(tmp_path):
    """The same tissue scanned at 0.25 (40x) and 0.5 um/px (20x): same physical patches (level-0
    coordinates x2), nearly equal features; also when the 40x pyramid has a 2x level to read from."""
    p0 = 448  # level-0 px of one 112 um patch at 0.25 um/px
    tissue = np.zeros((6 * p0, 8 * p0), bool)
    tissue[p0 : 5 * p0, p0 : 7 * p0] = True  # 6 x 4 patches, edges on the 112 um grid
    img40 = he_image(8 * p0, 6 * p0, 0.25, tissue, seed=3)
    import cv2

    img20 = cv2.resize(img40, (4 * p0, 3 * p0), interpolation=cv2.INTER_AREA)
    s40 = run_slide(write_slide(tmp_path / "x40.svs", img40, 0.25, "aperio", (1, 4, 16), quality=95), "x40", tmp_path)
    s40b = run_slide(
        write_slide(tmp_path / "x40b.tiff", img40, 0.25, "generic", (1, 2, 8), quality=95), "x40b", tmp_path
    )
    s20 = run_slide(write_slide(tmp_path / "x20.svs", img20, 0.5, "aperio", (1, 4, 16), quality=95), "x20", tmp_path)
    assert (s40.attrs["level"], s40.attrs["read_size"], s40.attrs["patch_size_level0"]) == (0, 448, 448)
    assert (s40b.attrs["level"], s40b.attrs["read_size"]) == (1, 224)
    assert (s20.attrs["level"], s20.attrs["read_size"], s20.attrs["patch_size_level0"]) == (0, 224, 224)
    assert len(s20.coords) == 24
    np.testing.assert_array_equal(s40.coords, 2 * s20.coords)
    np.testing.assert_array_equal(s40b.coords, s40.coords)
    rel = {}
    for name, other in (("x40", s40), ("x40b", s40b)):
        rel[name] = np.linalg.norm(other.features - s20.features, axis=1) / np.linalg.norm(s20.features, axis=1)
    assert rel["x40"].max() < 0.05 and rel["x40b"].max() < 0.05, rel
    # Not vacuous: the same places read at the wrong magnification (224 level-0 px of the 40x scan,
    # i.e. 0.25 um/px) give clearly different features.
    wrong = PatchGeometry(
        **{**{k: s40.attrs[k] for k in PatchGeometry.__dataclass_fields__}, "read_size": 224, "patch_size_level0": 224}
    )
    encoder, _ = build_encoder("tiny", TINY)
    feats, _ = extract_features(
        str(tmp_path / "x40.svs"), s40.coords, wrong, encoder, FEATURES, torch.device("cpu"), None
    )
    rel_wrong = np.linalg.norm(feats - s20.features, axis=1) / np.linalg.norm(s20.features, axis=1)
    assert rel_wrong.min() > 3 * rel["x40"].max(), (rel_wrong.min(), rel["x40"].max())  # 0.036 vs 0.009


def test_worker_shares_are_contiguous_and_balanced_by_patches():
    rng = np.random.default_rng(0)
    sizes = rng.choice([1, 3, 64], size=200, p=[0.2, 0.2, 0.6])  # tissue-edge regions hold few patches
    regions = [np.arange(n) for n in sizes]
    for workers in (1, 2, 7, 15):
        shares = worker_shares(regions, workers)
        assert len(shares) == workers
        assert [id(r) for share in shares for r in share] == [id(r) for r in regions]  # each once, in order
        loads = [sum(len(r) for r in share) for share in shares]
        assert max(loads) - sizes.sum() / workers <= sizes.max()  # off the ideal by under one region
    assert worker_shares([], 3) == [[], [], []]
    assert sum(map(len, worker_shares(regions[:2], 5))) == 2  # more workers than regions: some idle


def test_readers_fit_the_threads_granted(caplog):
    from healnet.commands.features import fit_to_threads

    before = torch.get_num_threads()
    try:
        assert fit_to_threads(config.Features(num_workers=15), 16).num_workers == 15
        with caplog.at_level("WARNING"):
            assert fit_to_threads(config.Features(num_workers=15), 4).num_workers == 3
        assert "capped to 3" in caplog.text and "--set-threads features=16" in caplog.text
        assert fit_to_threads(config.Features(num_workers=2), 1).num_workers == 0  # read in the main process
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_region_reads_equal_per_patch_reads(shared_data):
    path = shared_data / "slides/CMU-1-Small-Region.svs"
    geo = patch_geometry(0.499, (1.0,), config.Patching())
    coords = np.array([[x, y] for y in range(224, 2600, 224) for x in range(224, 2000, 224)], np.int64)[::3]
    regions = make_regions(coords, geo, 2, (240, 240))
    assert sorted(np.concatenate(regions).tolist()) == list(range(len(coords)))
    assert max(len(r) for r in regions) > 1
    with Slide(path) as slide:
        direct = np.stack([slide.read(tuple(c), 0, (224, 224)) for c in coords])
        np.testing.assert_array_equal(read_region_patches(slide, coords[regions[0]], geo), direct[regions[0]])
    seen = np.zeros(len(coords), int)
    for idx, imgs in iter_patches(str(path), coords, geo, config.Features(num_workers=2, region_patches=3)):
        seen[idx] += 1
        np.testing.assert_array_equal(imgs, direct[idx])
    assert (seen == 1).all()


def test_resnet50_trunc_matches_direct_timm_forward(shared_data, tmp_path):
    """`resnet50_trunc` (random weights here: no hub at test time) gives (N, 1024) features equal to
    timm's own truncated ResNet50 on the same patches, read the plain way."""
    import timm

    path = shared_data / "slides/CMU-1-Small-Region.svs"
    coords = np.array([[896, 224], [1120, 448], [896, 672], [1344, 1344]], np.int64)
    geo = patch_geometry(0.499, (1.0,), config.Patching())
    write_patch_store(tmp_path / "p.zarr", coords, {"status": "ok", "slide_id": "cmu", "mpp": 0.499, **geo.to_dict()})
    enc = config.Encoder(pretrained=False)  # resnet50.tv_in1k up to layer3
    run_features(
        str(path),
        tmp_path / "p.zarr",
        tmp_path / "f.zarr",
        "resnet50_trunc",
        enc,
        config.Features(batch_size=3, num_workers=1, device="cpu", precision="fp32"),
        config.SlideReading(),
    )
    store = read_feature_store(tmp_path / "f.zarr")
    assert store.features.shape == (4, 1024) and store.features.dtype == np.float32
    np.testing.assert_array_equal(store.coords, coords)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        full = timm.create_model("resnet50.tv_in1k", pretrained=False)
    assert store.attrs["weights"]["sha256"] == state_dict_sha256(full) and store.attrs["random_weights"] is True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        direct = timm.create_model("resnet50.tv_in1k", pretrained=False, features_only=True, out_indices=(3,)).eval()
    with Slide(path) as slide:
        x = torch.stack(
            [torch.from_numpy(slide.read(tuple(c), 0, (224, 224))).permute(2, 0, 1).float() / 255 for c in coords]
        )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = direct((x - mean) / std)[0].mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(store.features, expected, rtol=1e-4, atol=1e-4)
    assert store.attrs["encoder"] == "resnet50_trunc" and store.attrs["feature_dim"] == 1024
    assert store.attrs["mpp"] == 0.499 and store.attrs["patch_size_level0"] == 224


def test_encoder_identity_and_errors(tmp_path):
    enc, weights = build_encoder("tiny", TINY)
    again, weights2 = build_encoder("tiny", TINY)
    assert weights.sha256 == weights2.sha256 and weights.random and enc.feature_dim == 128
    _, weights3 = build_encoder("tiny", TINY.model_copy(update={"seed": 1}))
    assert weights3.sha256 != weights.sha256
    # weights from a local file: identity is the file's sha256, values are the file's
    import hashlib

    import timm

    torch.manual_seed(5)
    ref = timm.create_model("resnet18", pretrained=False)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    from_file, info = build_encoder(
        "f", TINY.model_copy(update={"pretrained": True, "weights": str(tmp_path / "w.pth")})
    )
    assert info.source == "file" and not info.random
    assert info.sha256 == hashlib.sha256((tmp_path / "w.pth").read_bytes()).hexdigest()
    torch.testing.assert_close(from_file.backbone.state_dict()["conv1.weight"], ref.state_dict()["conv1.weight"])
    with pytest.raises(FileNotFoundError, match="encoders.f.weights"):
        build_encoder("f", TINY.model_copy(update={"weights": str(tmp_path / "missing.pth")}))
    with pytest.raises(ValueError, match="not a feature stage"):
        build_encoder("f", TINY.model_copy(update={"truncate_after": "layer9"}))
    x = torch.randint(0, 255, (2, 224, 224, 3), dtype=torch.uint8)
    with torch.inference_mode():
        assert enc(x).shape == (2, 128)


def test_patch_store_is_atomic(tmp_path, monkeypatch):
    """An interrupted write leaves no store that looks finished."""
    import zarr

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(zarr.Group, "create_array", boom)
    with pytest.raises(KeyboardInterrupt):
        write_patch_store(tmp_path / "s.zarr", np.zeros((3, 2)), {"status": "ok"})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    write_patch_store(tmp_path / "s.zarr", np.ones((3, 2)), {"status": "ok"})
    assert read_patch_store(tmp_path / "s.zarr").coords.tolist() == [[1, 1]] * 3


def test_frozen_cpu_encoder_gives_the_eager_features():
    """The frozen TorchScript graph (BatchNorm folded, oneDNN-packed weights) is the same function."""
    import torch

    from healnet.wsi.encoders import FrozenEncoder, for_inference

    encoder, _ = build_encoder("tiny", TINY)
    encoder.eval()
    frozen = for_inference(encoder, torch.device("cpu"), None)
    assert isinstance(frozen, FrozenEncoder)
    patches = torch.randint(0, 256, (6, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        eager, fast = encoder(patches), frozen(patches)
    assert fast.shape == eager.shape and fast.dtype == torch.float32
    torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-5)
