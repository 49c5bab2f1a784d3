"""The classical references and the same-patients column end to end.

- `coxnet` and `cox_clinical` train and score through Snakemake (train + evaluate rules) on a small
  cohort in the TCGA table format: the first 150 BLCA patients, 180 omic features, 3 generated folds;
  beside them `healnet_omics_small`, whose gene families (data/reference/signatures.csv) the workflow
  fetches from a loopback server standing in for the pinned PORPOISE address.
- On the demo cohort (slides and omics each missing for some patients), `cindex_common` scores every
  model on the test patients that all of them score, checked against the predictions files.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml

from healnet.survival.metrics import cindex

pytestmark = pytest.mark.slow


def small_blca(shared_data: Path, out: Path) -> Path:
    table = pd.read_csv(shared_data / "tcga" / "blca" / "clinical_omics.csv.zip", low_memory=False)
    keep = table["case_id"].isin(table["case_id"].drop_duplicates().iloc[:150])
    meta = list(table.columns[:10])
    omics = [c for t in ("_rnaseq", "_cnv", "_mut") for c in [c for c in table.columns if c.endswith(t)][:60]]
    path = out / "small.csv"
    table.loc[keep, meta + omics].to_csv(path, index=False)
    return path


@pytest.fixture()
def signatures_server(shared_data, tmp_path):
    """A loopback HTTP server holding the shipped signatures.csv; yields (url, sha256, requested paths)."""
    served = tmp_path / "served"
    served.mkdir()
    body = (shared_data / "tcga" / "signatures.csv").read_bytes()
    (served / "signatures.csv").write_bytes(body)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/signatures.csv", hashlib.sha256(body).hexdigest(), requests
    srv.shutdown()
    srv.server_close()


def test_coxnet_and_cox_clinical_through_snakemake(shared_data, tmp_path, signatures_server, snakemake_in):
    url, sha256, requests = signatures_server
    extra = {
        "cohorts": {
            "small": {
                "clinical_omics": str(small_blca(shared_data, tmp_path)),
                "models": ["coxnet", "cox_clinical", "healnet_omics_small"],
            }
        },
        "splits": {"n_folds": 3},
        "models": {"healnet_omics_small": {"training": {"epochs": 1, "seeds": 1}}},
        "reference_files": {"signatures.csv": {"url": url, "sha256": sha256}},
    }
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump(extra))
    result = snakemake_in(tmp_path, "results/small/cindex.tsv")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # a local run drops Snakemake's job-rate limiter (workflow/rules/common.smk, onstart)
    assert "job-rate limiter is off" in result.stdout + result.stderr
    # ... and forks its train jobs from a warm server (healnet/warm.py)
    assert "start from a warm server" in result.stdout + result.stderr
    assert "ran in warm-start worker" in (tmp_path / "logs/small/train/healnet_omics_small_fold0.log").read_text()

    all_models = pd.read_csv(tmp_path / "results/small/cindex.tsv", sep="\t", dtype={"fold": str})
    assert list(all_models["model"].unique()) == ["coxnet", "cox_clinical", "healnet_omics_small"]
    # the gene families were fetched once, checked, and read by the model that names them
    assert (tmp_path / "data/reference/signatures.csv").read_bytes() == (
        shared_data / "tcga/signatures.csv"
    ).read_bytes()
    assert requests == ["/signatures.csv"]
    healnet = all_models[(all_models["model"] == "healnet_omics_small") & all_models["fold"].str.isdigit()]
    assert healnet["n"].astype(int).sum() == 150 and healnet["cindex"].between(0, 1).all()

    table = all_models[all_models["model"] != "healnet_omics_small"]
    per_fold = table[table["fold"].str.isdigit()]
    assert per_fold.groupby("model")["n"].sum().astype(int).to_dict() == {"coxnet": 150, "cox_clinical": 150}
    assert (per_fold["seeds"].astype(int) == 1).all()  # closed form: fitted once per fold
    # both models score every test patient, so the same-patients c-index is the c-index
    assert (per_fold["cindex_common"] == per_fold["cindex"]).all()
    mean = table[table["fold"] == "mean"].set_index("model")["cindex"]
    assert 0.5 < mean["cox_clinical"] < 0.8 and 0.45 < mean["coxnet"] < 0.8, mean
    # predictions replay the fold's own c-index: age alone, recomputed from the file
    pred = pd.read_csv(tmp_path / "results/small/models/cox_clinical/fold0/predictions.tsv", sep="\t")
    assert cindex(pred["time"], pred["event"], pred["risk"]) == pytest.approx(
        float(per_fold.set_index(["model", "fold"]).loc[("cox_clinical", "0"), "cindex"])
    )
    log = pd.read_csv(tmp_path / "results/small/models/coxnet/fold0/train_log.tsv", sep="\t")
    assert log["alpha"].iloc[0] > 0 and log["inner_cindex"].between(0, 1).all()


def test_same_patients_column_on_the_demo(repo, tmp_path):
    from healnet.config import parse_config
    from healnet.demo.inprocess import run_demo

    raw = yaml.safe_load((repo / "config.yaml").read_text())
    raw["demo"].update(n_patients=24, seed=0, slide_size_um=[800.0, 600.0], frac_no_slide=0.2, frac_no_omics=0.2)
    raw["splits"]["n_folds"] = 3
    raw["encoders"]["tiny"] = {"model": "resnet18", "truncate_after": "layer2", "pretrained": False}
    raw["cohorts"]["demo"].update(encoder="tiny", models=["snn", "abmil", "cox_clinical"])
    raw["cohorts"]["demo"]["training"] = {**raw["cohorts"]["demo"].get("training", {}), "epochs": 1, "seeds": 2}
    table = run_demo(parse_config(raw), tmp_path).set_index(["model", "fold"])
    res = tmp_path / "results" / "demo" / "models"
    for k in range(3):
        preds = {
            m: pd.read_csv(res / m / f"fold{k}" / "predictions.tsv", sep="\t") for m in ("snn", "abmil", "cox_clinical")
        }
        common = set.intersection(*(set(p["case_id"]) for p in preds.values()))
        sizes = {m: p["case_id"].nunique() for m, p in preds.items()}
        assert len(common) < min(sizes["snn"], sizes["abmil"])  # the unimodal models score different patients
        for m, p in preds.items():
            row = table.loc[(m, str(k))]
            assert int(row["n_common"]) == len(common) and int(row["n"]) == sizes[m]
            seeds = sorted(p["seed"].unique())
            assert int(row["seeds"]) == len(seeds) == (1 if m == "cox_clinical" else 2)
            mine = [
                cindex(*p[(p["seed"] == s) & p["case_id"].isin(common)][["time", "event", "risk"]].T.to_numpy())
                for s in seeds
            ]
            assert float(row["cindex_common"]) == pytest.approx(sum(mine) / len(mine), nan_ok=True)
