"""Real data, end to end through Snakemake: HEALNet on the TCGA-BLCA omics with the provided 5-fold
splits (no slides: WSI missing for every patient). Kept affordable on 2 CPU cores by fewer epochs
and a smaller model than the defaults (~1 min; measured mean 0.586); the c-index target is the
issue's (mean over folds > 0.55). The defaults' numbers for all four cohorts: bench/README.md."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

CHEAP = {
    "training": {"epochs": 4, "batch_size": 16, "grad_accumulation": 1, "lr": 1e-3},
    "models": {
        "healnet": {
            "architecture": "healnet",
            "modalities": ["wsi", "omics"],
            "params": {"depth": 1, "token_dim": 8, "heads": 2, "self_heads": 2, "attn_dropout": 0.0},
        }
    },
}


@pytest.mark.slow
def test_blca_omics_only_through_snakemake(shared_data, tmp_path, snakemake_in):
    tcga = shared_data / "tcga" / "blca"
    # the built-in blca cohort, omics only (wsi: false: no slide listed or fetched), from local tables
    extra = {
        "cohorts": {
            "blca": {
                "clinical_omics": str(tcga / "clinical_omics.csv.zip"),
                "splits": str(tcga / "splits"),
                "models": ["healnet"],
                "wsi": False,
            }
        },
        **CHEAP,
    }
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump(extra))
    result = snakemake_in(tmp_path, "results/blca/cindex.tsv")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    table = pd.read_csv(tmp_path / "results/blca/cindex.tsv", sep="\t", dtype={"fold": str}).set_index("fold")
    assert list(table.index) == ["0", "1", "2", "3", "4", "mean", "std"]
    assert table.loc[["0", "1", "2", "3", "4"], "n"].astype(int).sum() == 373  # every patient held out once
    assert table.loc["mean", "cindex"] > 0.55, table
    # the model ran without its WSI branch, so there is nothing to drop at inference
    assert pd.read_csv(tmp_path / "results/blca/cindex_missing.tsv", sep="\t").empty
    pred = pd.read_csv(tmp_path / "results/blca/models/healnet/fold0/predictions.tsv", sep="\t")
    assert set(pred["modalities"]) == {"omics"}
    index = pd.read_csv(tmp_path / "results/blca/inspect/index.tsv", sep="\t")
    top = pd.read_csv(tmp_path / "results/blca/inspect" / index["file"].iloc[0], sep="\t")
    assert len(top) == 20 and top["feature"].str.endswith(("_rnaseq", "_cnv", "_mut")).all()
