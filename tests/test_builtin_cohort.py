"""The command this project exists for, on a fresh working folder: `snakemake --cores N
results/blca/cindex.tsv` with the built-in `blca` cohort and nothing else to write or run first.

A loopback "GDC" (tests/test_gdc.py) lists and serves three small slides of three real BLCA
patients and the shipped BLCA table and splits; only the addresses point at it (the built-in
defaults stay the real GDC and the pinned PORPOISE files), plus a tiny encoder and one epoch so the
run takes a minute. Snakemake goes from the empty folder to cindex.tsv: manifest, downloads, sheet,
table, splits, tissue, patches, features, omics, labels, training of every fold, evaluation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_gdc import FakeGDC, _record, sha256_of

from healnet.wsi.store import read_feature_store
from healnet.wsi.synthetic import he_image, write_slide

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
CASES = ["TCGA-2F-A9KO", "TCGA-2F-A9KP", "TCGA-4Z-AA7M"]


def _slide_bytes(tmp: Path, seed: int) -> bytes:
    tissue = np.zeros((896, 1344), bool)
    tissue[224:672, 224 + 112 * seed : 1120] = True
    path = tmp / f"s{seed}.svs"
    write_slide(path, he_image(1344, 896, 0.5, tissue, seed=seed), 0.5, downsamples=(1, 4))
    return path.read_bytes()


@pytest.fixture()
def blca_gdc(shared_data, tmp_path):
    blca = shared_data / "tcga/blca"
    blobs, files = {}, []
    for i, case in enumerate(CASES):
        name = f"{case}-01Z-00-DX1.SYN{i}.svs"
        blobs[name] = _slide_bytes(tmp_path, i)
        files.append(_record(f"id-{i}", name, case, "TCGA-BLCA", blobs[name]))
    blobs["blca.csv.zip"] = (blca / "clinical_omics.csv.zip").read_bytes()
    for k in range(5):
        blobs[f"splits_{k}.csv"] = (blca / f"splits/splits_{k}.csv").read_bytes()
    srv = FakeGDC(files, blobs, ["TCGA-BLCA"])
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv, blobs
    srv.shutdown()
    srv.server_close()


def test_builtin_blca_runs_from_nothing_to_cindex(blca_gdc, repo, tmp_path):
    server, blobs = blca_gdc
    work = tmp_path / "clone"
    work.mkdir()
    shutil.copy(repo / "config.yaml", work / "config.yaml")
    addresses = {
        "gdc": {"base_url": server.url, "retries": 2, "backoff_s": 0.01},
        "cohorts": {
            "blca": {
                "clinical_omics_url": f"{server.url}/tables/blca.csv.zip",
                "clinical_omics_sha256": sha256_of(blobs["blca.csv.zip"]),
                "splits_url": server.url + "/tables/splits_{k}.csv",
                "splits_sha256": [sha256_of(blobs[f"splits_{k}.csv"]) for k in range(5)],
                "encoder": "tiny",
                "models": ["healnet"],
                "training": {"epochs": 1},
            }
        },
        "encoders": {"tiny": {"model": "resnet18", "truncate_after": "layer2", "pretrained": False}},
        "features": {"batch_size": 16, "num_workers": 1},
    }
    (work / "local.yaml").write_text(yaml.safe_dump(addresses))
    # No activated venv: PATH has no healnet, the rules must still find it.
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = "/usr/bin:/bin"
    cmd = [
        str(BIN / "snakemake"),
        "--cores",
        "2",
        "results/blca/cindex.tsv",
        "--configfile=local.yaml",
        "-s",
        str(repo / "workflow/Snakefile"),
    ]
    run = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]

    manifest = pd.read_csv(work / "data/blca/gdc_manifest.tsv", sep="\t")
    assert sorted(manifest["case_id"]) == CASES
    sheet = pd.read_csv(work / "data/blca/slides.tsv", sep="\t")
    assert sorted(sheet["case_id"]) == CASES
    for slide in sheet["slide_id"]:
        store = read_feature_store(work / f"results/blca/features/tiny/{slide}.zarr")
        assert store.attrs["status"] == "ok" and store.features.shape[0] > 0
    cindex = pd.read_csv(work / "results/blca/cindex.tsv", sep="\t")
    folds = cindex[cindex["fold"].astype(str).str.isdigit()]
    assert sorted(folds["fold"].astype(int)) == [0, 1, 2, 3, 4]
    assert folds["n"].sum() == 373  # every BLCA patient is a test patient once (provided splits)
    assert folds["cindex"].between(0, 1).all()
    predictions = pd.concat(
        pd.read_csv(work / f"results/blca/models/healnet/fold{k}/predictions.tsv", sep="\t") for k in range(5)
    )
    with_slides = predictions[predictions["case_id"].isin(CASES)]
    assert len(with_slides) == 3 and with_slides["modalities"].str.contains("wsi").all()
    assert server.log.count(("GET", "/tables/blca.csv.zip", None)) == 1

    again = subprocess.run([*cmd, "-n"], cwd=work, capture_output=True, text=True, timeout=300, env=env)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]
