"""The demo cohort's whole pipeline in one Python process, in the Snakemake layout.

Each stage is the same `healnet <stage>` subcommand the rules call, with the same config sections
as `--params`, only called in-process: on a small demo the start-up of ~4 processes per slide costs
far more than the work, so tests and benchmarks that need many patients (to compare models on
test folds that are not tiny) use this instead of Snakemake. Outputs land under `workdir` exactly
where the rules put them (data/demo, results/demo/...).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from healnet.config import Config

log = logging.getLogger(__name__)


def _call(argv: list[str]) -> None:
    from healnet.cli import main

    if main(argv) != 0:
        raise RuntimeError(f"healnet {argv[0]} failed (arguments: {' '.join(argv[1:])}); see the log above")


def run_demo(cfg: Config, workdir: str | Path, cohort: str = "demo") -> pd.DataFrame:
    """Generate the demo cohort, run every stage up to cindex.tsv; returns cindex.tsv as a frame."""
    work = Path(workdir)
    section = {name: getattr(cfg, name).model_dump_json() for name in
               ("demo", "slide_reading", "tissue", "patching", "features", "omics", "labels", "splits")}
    section["training"] = cfg.cohort_training(cohort).model_dump_json()
    spec = cfg.cohorts[cohort]
    data, res = work / "data" / cohort, work / "results" / cohort
    _call(["demo-cohort", "--outdir", str(data), "--params", section["demo"]])
    sheet = pd.read_csv(data / "slides.tsv", sep="\t")
    encoder = spec.encoder
    stores = []
    for slide_id, path in tqdm(list(zip(sheet["slide_id"], sheet["path"])), desc="demo slides", disable=None):
        geo, patches = res / "tissue" / f"{slide_id}.geojson", res / "patches" / f"{slide_id}.zarr"
        store = res / "features" / encoder / f"{slide_id}.zarr"
        _call(["tissue", "--slide", path, "--slide-id", slide_id, "--geojson", str(geo),
               "--qc", str(res / "qc" / f"{slide_id}.png"), "--reading", section["slide_reading"],
               "--tissue", section["tissue"], "--patching", section["patching"]])
        _call(["patches", "--slide", path, "--slide-id", slide_id, "--tissue", str(geo), "--output", str(patches),
               "--reading", section["slide_reading"], "--patching", section["patching"]])
        _call(["features", "--slide", path, "--patches", str(patches), "--output", str(store),
               "--encoder-name", encoder, "--encoder", cfg.encoders[encoder].model_dump_json(),
               "--features", section["features"], "--reading", section["slide_reading"]])
        stores.append(str(store))
    table = str(data / "clinical_omics.csv")
    _call(["omics", "--table", table, "--output", str(res / "omics.tsv.gz"), "--params", section["omics"]])
    _call(["labels", "--table", table, "--output", str(res / "labels.tsv"), "--params", section["labels"]])
    folds = [str(res / "splits" / f"fold{k}.tsv") for k in range(cfg.splits.n_folds)]
    for k, fold in enumerate(folds):
        _call(["splits", "--labels", str(res / "labels.tsv"), "--fold", str(k), "--output", fold,
               "--params", section["splits"]])
    common = ["--labels", str(res / "labels.tsv"), "--omics", str(res / "omics.tsv.gz"), "--features", *stores,
              "--sheet", str(data / "slides.tsv")]
    for model in spec.models:
        for k, fold in enumerate(folds):
            _call(["train", "--fold-file", fold, "--fold", str(k), *common, "--model", model,
                   "--spec", cfg.models[model].model_dump_json(), "--training", cfg.model_training(cohort, model).model_dump_json(),
                   "--omics-params", section["omics"], "--labels-params", section["labels"],
                   "--outdir", str(res / "models" / model / f"fold{k}")])
    _call(["evaluate", "--models", *spec.models, "--models-dir", str(res / "models"), "--fold-files", *folds,
           *common, "--cindex", str(res / "cindex.tsv"), "--missing", str(res / "cindex_missing.tsv"),
           "--training", section["training"], "--params", cfg.evaluation.model_dump_json()])
    return pd.read_csv(res / "cindex.tsv", sep="\t", dtype={"fold": str})
