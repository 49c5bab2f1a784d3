"""`healnet train` + `healnet evaluate` on tiny files in the contract formats (labels, folds, omics,
feature stores, sample sheet): cindex.tsv, cindex_missing.tsv and inspection outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from healnet.cli import main
from healnet.io import write_tsv
from healnet.survival.labels import assign_bins, bin_edges
from healnet.survival.metrics import cindex
from healnet.wsi.store import write_feature_store

pytestmark = pytest.mark.usefixtures("single_thread")

N, D, FOLDS = 36, 8, 2
SPECS = {
    "healnet": {
        "architecture": "healnet",
        "modalities": ["wsi", "omics"],
        "params": {"depth": 1, "num_latents": 4, "latent_dim": 16, "heads": 2, "self_heads": 2, "dim_head": 8},
    },
    "healnet_wsi": {
        "architecture": "healnet",
        "modalities": ["wsi"],
        "params": {"depth": 1, "num_latents": 4, "latent_dim": 16, "heads": 2, "self_heads": 2, "dim_head": 8},
    },
}
# The bins of labels.tsv (cohort edges): 18 training patients per fold are too few for stable quartiles
# of their own (labels.edges_from: train, the default, is tested in test_labels_splits and test_cox).
LABELS = json.dumps({"edges_from": "cohort"})
TRAINING = {"epochs": 3, "batch_size": 4, "grad_accumulation": 1, "lr": 3e-3, "device": "cpu", "max_patches": 16}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, shared_data):
    """36 patients: P0-P3 without slides, P4-P7 without omics, P8 with a no-tissue slide only."""
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    ids = [f"P{i:02d}" for i in range(N)]
    risk = rng.normal(size=N)
    time = rng.exponential(30 * np.exp(-risk)) + 0.5
    event = (rng.random(N) < 0.7).astype(int)
    edges = bin_edges(time, event, 4)
    write_tsv(
        pd.DataFrame(
            {
                "case_id": ids,
                "survival_months": time,
                "censorship": 1 - event,
                "event": event,
                "bin": assign_bins(time, edges),
            }
        ),
        root / "labels.tsv",
    )
    for k in range(FOLDS):
        split = ["test" if i % FOLDS == k else "train" for i in range(N)]
        write_tsv(pd.DataFrame({"case_id": ids, "split": split}), root / "splits" / f"fold{k}.tsv")
    omics = pd.DataFrame(rng.normal(size=(N, 5)), columns=[f"G{j}_rnaseq" for j in range(5)])
    omics["G0_rnaseq"] = risk
    omics["M1_mut"] = (rng.random(N) < 0.3).astype(float)
    omics["C1_cnv"] = rng.integers(-2, 3, N).astype(float)
    omics.insert(0, "case_id", ids)
    write_tsv(pd.concat([omics.iloc[:4], omics.iloc[8:]]), root / "omics.tsv.gz")  # P4-P7: no omics
    rows, stores = [], []
    boxes = shared_data / "slides" / "synthetic" / "boxes.tiff"  # 300 x 250 px: a real thumbnail
    for i, case in enumerate(ids):
        if i < 4:
            continue
        slide = f"S{i:02d}"
        path = root / "features" / f"{slide}.zarr"
        n = 0 if i == 8 else int(rng.integers(5, 20))
        feats = rng.normal(size=(n, D)).astype(np.float32)
        feats[:, 0] += risk[i]
        coords = np.stack([rng.integers(0, 250, n), rng.integers(0, 200, n)], 1)
        attrs = {
            "status": "no_tissue" if n == 0 else "ok",
            "slide_id": slide,
            "mpp": 0.5,
            "patch_size_level0": 50,
            "encoder": "toy",
        }
        write_feature_store(path, feats, coords, attrs)
        rows.append({"case_id": case, "slide_id": slide, "path": str(boxes)})
        stores.append(str(path))
    write_tsv(pd.DataFrame(rows), root / "slides.tsv")
    for model, spec in SPECS.items():
        for k in range(FOLDS):
            rc = main(
                [
                    "train",
                    "--labels",
                    str(root / "labels.tsv"),
                    "--fold-file",
                    str(root / "splits" / f"fold{k}.tsv"),
                    "--fold",
                    str(k),
                    "--omics",
                    str(root / "omics.tsv.gz"),
                    "--features",
                    *stores,
                    "--sheet",
                    str(root / "slides.tsv"),
                    "--model",
                    model,
                    "--spec",
                    json.dumps(spec),
                    "--training",
                    json.dumps(TRAINING),
                    "--outdir",
                    str(root / "models" / model / f"fold{k}"),
                    "--labels-params",
                    LABELS,
                ]
            )
            assert rc == 0
    rc = main(
        [
            "evaluate",
            "--models",
            *SPECS,
            "--models-dir",
            str(root / "models"),
            "--fold-files",
            *[str(root / "splits" / f"fold{k}.tsv") for k in range(FOLDS)],
            "--labels",
            str(root / "labels.tsv"),
            "--omics",
            str(root / "omics.tsv.gz"),
            "--features",
            *stores,
            "--sheet",
            str(root / "slides.tsv"),
            "--cindex",
            str(root / "cindex.tsv"),
            "--missing",
            str(root / "cindex_missing.tsv"),
            "--inspect",
            str(root / "inspect"),
            "--versions",
            str(root / "versions.tsv"),
            "--params",
            json.dumps({"inspect_top_features": 3}),
            "--training",
            json.dumps(TRAINING),
        ]
    )
    assert rc == 0
    return root


def test_predictions_cover_each_models_patients(cohort):
    pred = pd.read_csv(cohort / "models/healnet/fold0/predictions.tsv", sep="\t")
    assert len(pred) == N // FOLDS  # every test patient has at least one modality
    by_case = dict(zip(pred["case_id"], pred["modalities"]))
    assert by_case["P00"] == "omics" and by_case["P04"] == "wsi" and by_case["P08"] == "omics"
    assert by_case["P10"] == "wsi+omics"
    wsi_only = pd.read_csv(cohort / "models/healnet_wsi/fold0/predictions.tsv", sep="\t")
    assert set(wsi_only["case_id"]) == {c for c in pred["case_id"] if c not in {"P00", "P02", "P08"}}


def test_cindex_table(cohort):
    table = pd.read_csv(cohort / "cindex.tsv", sep="\t", dtype={"fold": str})
    assert list(table.columns) == [
        "model",
        "fold",
        "cindex",
        "cindex_td",
        "ibs",
        "n",
        "events",
        "excluded",
        "seeds",
        "cindex_seed_std",
        "cindex_common",
        "n_common",
    ]
    assert table["fold"].tolist() == ["0", "1", "0", "1", "mean", "std", "mean", "std"]
    rows = table.set_index(["model", "fold"])
    assert rows.loc[("healnet", "0"), "n"] == 18 and rows.loc[("healnet", "0"), "excluded"] == 0
    assert rows.loc[("healnet_wsi", "0"), "n"] == 15 and rows.loc[("healnet_wsi", "0"), "excluded"] == 3
    per_fold = table[table["fold"].isin(["0", "1"]) & (table["model"] == "healnet")]
    assert rows.loc[("healnet", "mean"), "cindex"] == pytest.approx(per_fold["cindex"].mean())
    assert rows.loc[("healnet", "std"), "cindex"] == pytest.approx(per_fold["cindex"].std(ddof=0))
    assert table["cindex"].between(0, 1).all() and table["ibs"].iloc[:4].between(0, 1).all()
    # same patients: healnet_wsi scores 15 of fold 0's 18 test patients, so both are scored on those 15
    assert rows.loc[("healnet", "0"), "n_common"] == rows.loc[("healnet_wsi", "0"), "n_common"] == 15
    pred = pd.read_csv(cohort / "models/healnet/fold0/predictions.tsv", sep="\t")
    common = pred[
        pred["case_id"].isin(pd.read_csv(cohort / "models/healnet_wsi/fold0/predictions.tsv", sep="\t")["case_id"])
    ]
    assert rows.loc[("healnet", "0"), "cindex_common"] == pytest.approx(
        cindex(common["time"], common["event"], common["risk"])
    )
    assert rows.loc[("healnet_wsi", "0"), "cindex_common"] == pytest.approx(rows.loc[("healnet_wsi", "0"), "cindex"])
    # the planted signal is learned by the multimodal model
    assert rows.loc[("healnet", "mean"), "cindex"] > 0.6


def test_versions_beside_cindex_record_the_stack(cohort):
    """evaluate writes the stack it ran with: torch as installed, the device it used, lock status."""
    import importlib.metadata as md
    import platform

    table = pd.read_csv(cohort / "versions.tsv", sep="\t", dtype=str, keep_default_na=False).set_index("package")
    assert table.loc["torch", "version"] == md.version("torch")
    assert table.loc["python", "version"] == platform.python_version()
    assert table.loc["device", "version"] == "cpu" and table.loc["python", "status"] == "runtime"
    assert table.loc["torch", "status"] in {"locked", "differs"} and table.loc["torch", "locked"] == "2.14.1"


def test_cindex_missing_scenarios(cohort):
    table = pd.read_csv(cohort / "cindex_missing.tsv", sep="\t", dtype={"fold": str})
    assert set(table["model"]) == {"healnet"}  # the WSI-only model has nothing to drop
    rows = table.set_index(["scenario", "fold"])
    fold0 = pd.read_csv(cohort / "models/healnet/fold0/predictions.tsv", sep="\t")
    has_wsi = fold0["modalities"].str.contains("wsi").sum()
    has_omics = fold0["modalities"].str.contains("omics").sum()
    assert rows.loc[("wsi_only", "0"), "n"] == has_wsi and rows.loc[("wsi_only", "0"), "excluded"] == 18 - has_wsi
    assert rows.loc[("omics_only", "0"), "n"] == has_omics
    assert rows.loc[("one_random", "0"), "n"] == 18
    assert {"mean", "std"} <= set(table["fold"])


def test_inspection_outputs(cohort):
    index = pd.read_csv(cohort / "inspect" / "index.tsv", sep="\t")
    assert set(index["rank"]) == {"highest_risk", "lowest_risk"} and set(index["model"]) == set(SPECS)
    pngs = index[index["file"].str.endswith(".png")]
    assert len(pngs) >= 4 and all((cohort / "inspect" / f).stat().st_size > 1000 for f in pngs["file"])
    top = pd.read_csv(cohort / "inspect" / index[index["modality"] == "omics"]["file"].iloc[0], sep="\t")
    assert list(top.columns) == ["rank", "feature", "attention", "value"] and len(top) == 3
    assert top["attention"].is_monotonic_decreasing and top["feature"].str.contains("_").all()


def test_evaluate_names_a_missing_run(cohort, tmp_path, capfd):
    rc = main(
        [
            "evaluate",
            "--models",
            "nosuch",
            "--models-dir",
            str(cohort / "models"),
            "--fold-files",
            str(cohort / "splits" / "fold0.tsv"),
            "--labels",
            str(cohort / "labels.tsv"),
            "--cindex",
            str(tmp_path / "c.tsv"),
            "--missing",
            str(tmp_path / "m.tsv"),
        ]
    )
    err = capfd.readouterr().err
    assert rc == 1 and "model 'nosuch' has not been trained on fold 0" in err and "healnet train" in err


def test_a_copied_run_scores_patients_from_raw_inputs_alone(cohort, tmp_path):
    """A run folder carries its fold's preprocessing: copied elsewhere, it scores the fold's test
    patients from the omics matrix and the feature stores (no labels, folds or config), equal to its
    predictions.tsv; one patient alone scores the same (nothing is fitted on the inputs)."""
    import shutil

    from healnet import load_run
    from healnet.training.data import WsiBags, read_omics

    moved = tmp_path / "elsewhere" / "healnet_fold0"
    shutil.copytree(cohort / "models/healnet/fold0", moved)
    pred = pd.read_csv(cohort / "models/healnet/fold0/predictions.tsv", sep="\t", dtype={"case_id": str})
    stores = sorted(str(p) for p in (cohort / "features").glob("*.zarr"))
    run = load_run(moved)
    assert run.info["encoder"]["encoder"] == "toy" and run.info["omics"]["rnaseq_clip"] is not None
    got = run.predict(cohort / "omics.tsv.gz", stores, cohort / "slides.tsv", case_ids=list(pred["case_id"]))
    cols = ["risk", *[c for c in pred.columns if c.startswith("surv_")]]
    assert (
        got["case_id"].tolist() == pred["case_id"].tolist()
        and got["modalities"].tolist() == pred["modalities"].tolist()
    )
    np.testing.assert_allclose(got[cols].to_numpy(), pred[cols].to_numpy(), rtol=0, atol=1e-6)

    out = tmp_path / "predictions.tsv"  # the CLI: every patient of the inputs
    assert (
        main(
            [
                "predict",
                "--run",
                str(moved),
                "--omics",
                str(cohort / "omics.tsv.gz"),
                "--features",
                *stores,
                "--sheet",
                str(cohort / "slides.tsv"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    cli = pd.read_csv(out, sep="\t", dtype={"case_id": str}).set_index("case_id")
    assert len(cli) == N  # every patient has omics or a slide with patches
    np.testing.assert_allclose(cli.loc[pred["case_id"], cols].to_numpy(), pred[cols].to_numpy(), rtol=0, atol=1e-6)

    case = pred.loc[pred["modalities"] == "wsi+omics", "case_id"].iloc[0]
    one = run.predict(
        read_omics(cohort / "omics.tsv.gz").loc[[case]],
        [cohort / "features" / f"S{case[1:]}.zarr"],
        cohort / "slides.tsv",
    )
    assert one["case_id"].tolist() == [case] and one["modalities"].tolist() == ["wsi+omics"]
    np.testing.assert_allclose(
        one[cols].to_numpy()[0], pred.set_index("case_id").loc[case, cols].to_numpy(float), rtol=0, atol=1e-5
    )
    with pytest.raises(ValueError, match="trained on features of encoder 'toy'.*come from 'uni'"):
        run.check_encoder(WsiBags({}, D, None, {"encoder": "uni", "weights": None}))
    old = type(run)(run.path, run.model, {**run.info, "omics_transform": None})  # a run of an older healnet
    with pytest.raises(ValueError, match="carries no omics transform.*retrain it"):
        old.predict(cohort / "omics.tsv.gz")


def test_cindex_needs_no_model_and_evaluation_loads_each_checkpoint_once(cohort, tmp_path, monkeypatch):
    """cindex.tsv comes from predictions.tsv + run.json + labels; the re-runs (missing modalities,
    inspection) load each checkpoint once."""
    import filecmp

    import healnet.inference as inference
    from healnet.config import Evaluation
    from healnet.evaluate import evaluate_cohort
    from healnet.evaluate.cohort import CohortRuns
    from healnet.evaluate.metrics import cindex_table

    loaded, load = [], inference.load_model
    monkeypatch.setattr(
        inference, "load_model", lambda path, device="cpu": loaded.append(str(path)) or load(path, device)
    )
    runs = CohortRuns.from_files(
        cohort / "models",
        [cohort / "splits" / f"fold{k}.tsv" for k in range(FOLDS)],
        cohort / "labels.tsv",
        cohort / "omics.tsv.gz",
        sorted((cohort / "features").glob("*.zarr")),
        cohort / "slides.tsv",
    )
    cindex_table(runs, list(SPECS), Evaluation())
    assert loaded == []
    evaluate_cohort(
        list(SPECS),
        runs,
        Evaluation(inspect_top_features=3),
        tmp_path / "cindex.tsv",
        tmp_path / "cindex_missing.tsv",
        tmp_path / "inspect",
    )
    assert len(loaded) == len(set(loaded)) and len(loaded) >= FOLDS  # healnet's folds at least (missing modalities)
    assert filecmp.cmp(tmp_path / "cindex.tsv", cohort / "cindex.tsv", shallow=False)
    assert filecmp.cmp(tmp_path / "cindex_missing.tsv", cohort / "cindex_missing.tsv", shallow=False)
