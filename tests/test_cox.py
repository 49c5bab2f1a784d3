"""Classical Cox references (healnet/models/cox.py), seeds, and nested selection on training patients:
values of the Breslow estimate, planted-signal recovery, the registry contract, and that nothing
chosen (coxnet's alpha, HEALNet's tokenisation and epochs) changes when the test labels are poisoned."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from healnet.config import Training
from healnet.models import build_model
from healnet.models.cox import breslow
from healnet.survival.labels import assign_bins, bin_edges
from healnet.survival.metrics import cindex, risk_from_survival, survival_from_logits
from healnet.training.data import FoldData
from healnet.training.loop import train_fold
from healnet.training.select import Recipe, inner_fold, select_recipe

pytestmark = pytest.mark.usefixtures("single_thread")

N, N_TEST, F = 120, 40, 30


def synthetic_fold(seed: int = 0) -> FoldData:
    """N patients, the first N - N_TEST train: risk = 2 omic features + age; 28 noise features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, F)).astype(np.float32)
    age = rng.normal(60, 10, N)
    risk = x[:, 0] - x[:, 1] + 0.05 * (age - 60)
    time = rng.exponential(30 * np.exp(-risk)) + 0.1
    event = (rng.random(N) < 0.75).astype(int)
    split = np.array(["train"] * (N - N_TEST) + ["test"] * N_TEST)
    edges = bin_edges(time[split == "train"], event[split == "train"], 4)
    clinical = np.stack([(age - 60) / 10, (rng.random(N) < 0.5)], 1).astype(np.float32)
    names = {"omics": [f"G{j}_rnaseq" for j in range(F)], "clinical": ["age_clinical", "is_female_clinical"]}
    return FoldData(
        case_ids=[f"P{i:03d}" for i in range(N)],
        time=time,
        event=event,
        bins=assign_bins(time, edges),
        edges=edges,
        tabular={"omics": x, "clinical": clinical},
        tabular_present={"omics": np.ones(N, bool), "clinical": np.ones(N, bool)},
        feature_names=names,
        wsi=None,
        split_of=split,
    )


def poisoned(data: FoldData) -> FoldData:
    """The same fold with every test patient's time and event scrambled."""
    test = data.split_of == "test"
    time, event = data.time.copy(), data.event.copy()
    time[test] = time[test][::-1] * 7.0
    event[test] = 1 - event[test]
    return FoldData(
        case_ids=data.case_ids,
        time=time,
        event=event,
        bins=data.bins,
        edges=data.edges,
        tabular=data.tabular,
        tabular_present=data.tabular_present,
        feature_names=data.feature_names,
        wsi=None,
        split_of=data.split_of,
    )


def test_breslow_without_covariates_is_nelson_aalen():
    time = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 8.0])
    event = np.array([1, 1, 0, 1, 0, 1])
    h = breslow(np.zeros(6), time, event, np.array([0.5, 2.0, 4.0, 10.0]))
    # at risk: 6 at t=1, 5 at t=2 (one event), 3 at t=3, 1 at t=8
    assert h == pytest.approx([0.0, 1 / 6 + 1 / 5, 1 / 6 + 1 / 5 + 1 / 3, 1 / 6 + 1 / 5 + 1 / 3 + 1])
    # exp(lp) scales each patient's share of the risk set: doubling everyone halves H0
    assert breslow(np.full(6, np.log(2)), time, event, np.array([10.0])) == pytest.approx(
        [(1 / 6 + 1 / 5 + 1 / 3 + 1) / 2]
    )


def test_coxnet_finds_the_planted_features_and_scores_like_a_registry_model(tmp_path):
    data = synthetic_fold()
    frame = train_fold(data, "coxnet", ["omics"], {}, Training(), 0, tmp_path / "coxnet", "coxnet")
    log = pd.read_csv(tmp_path / "coxnet" / "train_log.tsv", sep="\t")
    assert log["alpha"].iloc[0] > 0 and 2 <= log["nonzero"].iloc[0] < F
    ckpt = torch.load(tmp_path / "coxnet" / "checkpoint.pt", weights_only=True)
    beta = ckpt["state_dict"]["beta"].numpy()
    assert beta[0] > 0 and beta[1] < 0 and np.abs(beta[:2]).min() > np.abs(beta[2:]).max()
    assert cindex(frame["time"], frame["event"], frame["risk"]) > 0.7
    assert len(frame) == N_TEST and (frame["seed"] == 0).all()  # closed form: one fit, not one per seed
    surv = frame[[f"surv_{j}" for j in range(4)]].to_numpy()
    assert (np.diff(surv, axis=1) <= 1e-6).all() and ((surv > 0) & (surv <= 1)).all()


def test_linear_cox_risk_is_monotone_in_the_linear_predictor():
    model = build_model("cox_clinical", {"clinical": 2}, 4)
    model.beta.copy_(torch.tensor([1.0, 0.0], dtype=model.beta.dtype))
    model.log_h0.copy_(torch.log(torch.tensor([0.1, 0.3, 0.6, 1.0], dtype=model.log_h0.dtype)))
    x = torch.tensor([[-1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    surv = survival_from_logits(model({"clinical": x}))
    # S_j = exp(-H0_j exp(lp)) at lp = -1, 0, 2
    expected = np.exp(-np.outer(np.exp([-1.0, 0.0, 2.0]), [0.1, 0.3, 0.6, 1.0]))
    assert surv.numpy() == pytest.approx(expected, rel=1e-4)
    assert np.argsort(risk_from_survival(surv)).tolist() == [0, 1, 2]


def test_cox_clinical_uses_age(tmp_path):
    frame = train_fold(synthetic_fold(1), "cox_clinical", ["clinical"], {}, Training(), 0, tmp_path / "cc", "cc")
    beta = torch.load(tmp_path / "cc" / "checkpoint.pt", weights_only=True)["state_dict"]["beta"].numpy()
    assert beta[0] > 0.1 and abs(beta[0]) > abs(beta[1])
    assert cindex(frame["time"], frame["event"], frame["risk"]) > 0.55


def test_coxnet_choice_ignores_test_labels(tmp_path):
    data = synthetic_fold(2)
    clean = train_fold(data, "coxnet", ["omics"], {}, Training(), 0, tmp_path / "a", "coxnet")
    dirty = train_fold(poisoned(data), "coxnet", ["omics"], {}, Training(), 0, tmp_path / "b", "coxnet")
    logs = [pd.read_csv(tmp_path / d / "train_log.tsv", sep="\t") for d in ("a", "b")]
    assert logs[0]["alpha"].iloc[0] == logs[1]["alpha"].iloc[0]
    assert clean["risk"].to_numpy() == pytest.approx(dirty["risk"].to_numpy())
    # the poisoning is real: the test c-index moves
    assert cindex(clean["time"], clean["event"], clean["risk"]) != cindex(dirty["time"], dirty["event"], dirty["risk"])


def test_inner_fold_holds_no_test_patient():
    data = synthetic_fold()
    inner = inner_fold(data, 0.25, seed=0)
    test_ids = {c for c, s in zip(data.case_ids, data.split_of) if s == "test"}
    assert not test_ids & set(inner.case_ids)
    assert (inner.split_of == "val").sum() == 20 and (inner.split_of == "train").sum() == 60


def test_healnet_recipe_selection_ignores_test_labels():
    small = dict(depth=1, num_latents=4, latent_dim=16, heads=2, self_heads=2, dim_head=8, token_dim=8)
    cfg = Training(epochs=3, batch_size=16, grad_accumulation=1, lr=3e-3, device="cpu")
    cands = {
        "modality": Recipe("healnet", ("omics", "clinical"), {**small, "omics_tokens": "modality"}, cfg),
        "family": Recipe("healnet", ("omics", "clinical"), {**small, "omics_tokens": "family"}, cfg),
    }
    data = synthetic_fold(3)
    clean = select_recipe(data, cands, 0, seed=0, repeats=1)
    dirty = select_recipe(poisoned(data), cands, 0, seed=0, repeats=1)
    pd.testing.assert_frame_equal(clean, dirty)
    assert clean["chosen"].sum() == 1 and clean["epochs"].between(1, 3).all()
    assert clean["score"].between(0, 1).all()


def test_seeds_give_one_prediction_per_patient_and_seed(tmp_path):
    cfg = Training(epochs=2, batch_size=16, grad_accumulation=1, lr=3e-3, device="cpu", seeds=2)
    frame = train_fold(synthetic_fold(), "snn", ["omics"], {"hidden": [16, 16]}, cfg, 0, tmp_path / "snn", "snn")
    assert frame.groupby("seed").size().to_dict() == {0: N_TEST, 1: N_TEST}
    assert not np.allclose(frame.loc[frame["seed"] == 0, "risk"], frame.loc[frame["seed"] == 1, "risk"])
    log = pd.read_csv(tmp_path / "snn" / "train_log.tsv", sep="\t")
    assert sorted(log["seed"].unique()) == [0, 1] and len(log) == 4
