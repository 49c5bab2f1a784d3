"""Training on tiny in-memory folds: exact gradient accumulation, determinism, outputs, early stopping."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from healnet.config import Training
from healnet.inference import load_model
from healnet.models import build_model
from healnet.training.data import FoldData, SlideBag, WsiBags, balanced_order, make_batch
from healnet.training.loop import train_epoch, train_fold

pytestmark = pytest.mark.usefixtures("single_thread")

D, F = 6, 10
SMALL = {
    "depth": 1,
    "num_latents": 4,
    "latent_dim": 16,
    "heads": 2,
    "self_heads": 2,
    "dim_head": 8,
    "attn_dropout": 0.0,
    "ff_dropout": 0.0,
}


def synthetic_fold(n=60, seed=0, splits=("train",) * 40 + ("test",) * 20) -> FoldData:
    """Risk visible in omics feature 0 and in the mean of patch feature 0; some patients lack a modality."""
    rng = np.random.default_rng(seed)
    risk_o, risk_w = rng.normal(size=n), rng.normal(size=n)
    time = rng.exponential(30 * np.exp(-(risk_o + risk_w)))
    cens = rng.random(n) < 0.3
    event = (~cens).astype(int)
    edges = np.quantile(time[event == 1], [0, 0.25, 0.5, 0.75, 1])
    edges[0], edges[-1] = time.min() - 1e-6, time.max() + 1e-6
    bins = np.searchsorted(edges[1:-1], time, side="right")
    omics = rng.normal(size=(n, F)).astype(np.float32)
    omics[:, 0] = risk_o
    has_omics = rng.random(n) > 0.15
    has_wsi = ~has_omics | (rng.random(n) > 0.15)
    bags = {}
    for i in range(n):
        if has_wsi[i]:
            k = int(rng.integers(3, 15))
            feats = rng.normal(size=(k, D)).astype(np.float32)
            feats[:, 0] += risk_w[i]
            coords = np.stack([np.arange(k) * 224, np.zeros(k)], 1).astype(np.int64)
            bags[f"P{i}"] = [SlideBag(f"S{i}", feats, coords, 224)]
    omics[~has_omics] = 0
    return FoldData(
        case_ids=[f"P{i}" for i in range(n)],
        time=time,
        event=event,
        bins=bins,
        edges=edges,
        tabular={"omics": omics},
        tabular_present={"omics": has_omics},
        feature_names={"omics": [f"G{j}_rnaseq" for j in range(F)]},
        wsi=WsiBags.from_arrays(bags),
        split_of=np.array(list(splits)),
    )


def test_make_batch_pads_masks_and_caps():
    data = synthetic_fold()
    idx = [i for i in range(10) if data.present("wsi")[i]][:3]
    batch = make_batch(data, idx, ["wsi", "omics"])
    lens = [len(data.wsi.bag(data.case_ids[i])) for i in idx]
    assert batch["wsi"].shape == (3, max(lens), D)
    assert batch["wsi_mask"].sum(1).tolist() == lens
    assert torch.all(batch["wsi"][~batch["wsi_mask"]] == 0)
    capped = make_batch(data, idx, ["wsi"], max_patches=3, rng=np.random.default_rng(0))
    assert capped["wsi"].shape[1] == 3 and capped["wsi_mask"].all()
    no_wsi = int(np.flatnonzero(~data.present("wsi"))[0])
    b = make_batch(data, [no_wsi], ["wsi", "omics"])
    assert not b["present"]["wsi"][0] and b["present"]["omics"][0]


def test_balanced_order_equalises_bin_censorship_classes():
    data = synthetic_fold(n=400, splits=("train",) * 400)
    order = balanced_order(data, np.arange(400), torch.Generator().manual_seed(0))
    label = 2 * data.bins[order] + data.censorship[order]
    counts = np.bincount(label, minlength=8)
    present = counts[np.bincount(2 * data.bins + data.censorship, minlength=8) > 0]
    assert present.min() > 0.6 * present.mean()


def test_grad_accumulation_equals_one_large_batch():
    data = synthetic_fold()
    mods = ["wsi", "omics"]
    order = np.array([0, 1, 2, 3, 4, 5])  # mixed bag lengths and missing modalities
    torch.manual_seed(0)
    base = build_model("healnet", data.input_dims(mods), 4, SMALL)
    results = []
    for bs, acc in ((1, 6), (6, 1), (2, 3)):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        cfg = Training(batch_size=bs, grad_accumulation=acc, max_patches=None, alpha=0.4)
        train_epoch(model, opt, data, order, mods, cfg, np.random.default_rng(0), torch.device("cpu"))
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(results[0], results[2], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(results[0], torch.cat([p.flatten() for p in base.parameters()]))


def test_train_fold_learns_writes_outputs_and_is_deterministic(tmp_path):
    data = synthetic_fold(n=90, splits=("train",) * 60 + ("test",) * 30)
    cfg = Training(epochs=6, batch_size=4, grad_accumulation=2, lr=3e-3, max_patches=8, device="cpu")
    frames = []
    for run in ("a", "b"):
        frames.append(train_fold(data, "healnet", ["wsi", "omics"], SMALL, cfg, 0, tmp_path / run, "healnet"))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    pred = pd.read_csv(tmp_path / "a" / "predictions.tsv", sep="\t")
    assert list(pred.columns) == [
        "case_id",
        "seed",
        "risk",
        "surv_0",
        "surv_1",
        "surv_2",
        "surv_3",
        "modalities",
        "event",
        "time",
        "bin",
    ]
    assert len(pred) == 30 and set(pred["modalities"]) <= {"wsi+omics", "wsi", "omics"}
    assert np.allclose(pred["risk"], -pred[[f"surv_{j}" for j in range(4)]].sum(axis=1))
    from healnet.survival.metrics import cindex

    assert cindex(pred["time"], pred["event"], pred["risk"]) > 0.7
    log = pd.read_csv(tmp_path / "a" / "train_log.tsv", sep="\t")
    assert log["epoch"].tolist() == list(range(1, 7)) and log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]
    model, ckpt = load_model(tmp_path / "a" / "checkpoint.pt")
    assert ckpt["modalities"] == ["wsi", "omics"] and len(ckpt["edges"]) == 5 and ckpt["fold"] == 0
    batch = make_batch(data, [data.index[pred["case_id"][0]]], ckpt["modalities"])
    with torch.no_grad():
        surv0 = torch.cumprod(1 - torch.sigmoid(model(batch)), 1)[0, 0].item()
    assert surv0 == pytest.approx(pred["surv_0"][0], abs=1e-6)


def test_wsi_features_centred_on_training_patches(tmp_path):
    """The centre is the mean patch of the training patients, travels in the checkpoint, and makes the
    model blind to an offset common to all patches (what random-encoder features mostly are)."""
    data = synthetic_fold()
    cfg = Training(
        epochs=3, batch_size=4, grad_accumulation=1, lr=3e-3, max_patches=8, device="cpu", center_wsi_features=True
    )
    frame = train_fold(data, "abmil", ["wsi"], {}, cfg, 0, tmp_path / "a", "abmil")
    train = [c for c, s in zip(data.case_ids, data.split_of) if s == "train" and data.wsi.has(c)]
    expected = np.concatenate([data.wsi.bag(c) for c in train]).mean(axis=0)
    model, ckpt = load_model(tmp_path / "a" / "checkpoint.pt")
    np.testing.assert_allclose(ckpt["state_dict"]["wsi_center"].numpy(), expected, rtol=1e-5, atol=1e-6)

    shifted = copy.deepcopy(data)
    offset = np.linspace(5, 50, D).astype(np.float32)
    shifted.wsi = WsiBags.from_arrays(
        {
            c: [SlideBag(b.slide_id, b.features + offset, b.coords, 224) for b in data.wsi.slide_bags(c)]
            for c in data.wsi.slides
        }
    )
    moved = train_fold(shifted, "abmil", ["wsi"], {}, cfg, 0, tmp_path / "b", "abmil")
    np.testing.assert_allclose(moved["risk"], frame["risk"], atol=1e-4)
    uncentred = train_fold(
        shifted, "abmil", ["wsi"], {}, cfg.model_copy(update={"center_wsi_features": False}), 0, tmp_path / "c", "abmil"
    )
    assert "wsi_center" not in load_model(tmp_path / "c" / "checkpoint.pt")[1]["state_dict"]
    assert not np.allclose(uncentred["risk"], frame["risk"], atol=1e-3)


def test_early_stopping_uses_inner_val_only(tmp_path):
    data = synthetic_fold(n=60, splits=("train",) * 40 + ("test",) * 20)
    cfg = Training(epochs=30, batch_size=8, grad_accumulation=1, lr=5e-2, early_stopping_patience=2, device="cpu")
    with pytest.raises(ValueError, match="inner_val_fraction"):
        train_fold(data, "healnet", ["omics"], SMALL, cfg, 0, tmp_path / "x")
    data = synthetic_fold(n=60, splits=("train",) * 30 + ("val",) * 10 + ("test",) * 20)
    train_fold(data, "healnet", ["omics"], SMALL, cfg, 0, tmp_path / "y")
    log = pd.read_csv(tmp_path / "y" / "train_log.tsv", sep="\t")
    assert len(log) < 30 and log["val_loss"].notna().all()
    best = log.loc[log["best"], "epoch"].item()
    assert log["val_loss"].idxmin() + 1 == best and len(log) == best + 2
    assert torch.load(tmp_path / "y" / "checkpoint.pt", weights_only=True)["epoch"] == best


def test_modality_nobody_has_is_dropped_and_patients_without_any_are_left_out(tmp_path):
    data = synthetic_fold(n=60)
    data.wsi = None  # an omics-only cohort: WSI missing for everyone
    cfg = Training(epochs=1, batch_size=8, grad_accumulation=1, device="cpu")
    frame = train_fold(data, "healnet", ["wsi", "omics"], SMALL, cfg, 1, tmp_path)
    assert len(frame) == int(data.present("omics")[40:].sum()) and set(frame["modalities"]) == {"omics"}
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["modalities"] == ["omics"]
