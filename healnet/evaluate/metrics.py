"""cindex.tsv: metrics of each run's held-out predictions (predictions.tsv, run.json and labels only).

One row per model and fold from each fold's `predictions.tsv` (held-out `test` patients): `cindex`
(published convention, `healnet.survival.metrics.cindex`), `cindex_td` and `ibs` (pycox, on the
run's bin edges from run.json), `n` patients, `events`, `excluded` (test patients without any of the
model's modalities, left out); then per model a `mean` and a `std` row (std over folds, ddof 0 as
numpy / the published code). With `training.seeds` > 1 a fold's metrics are the mean over its seeds
(`seeds` runs; predictions.tsv has a `seed` column) and `cindex_seed_std` is their spread: the `std`
row's `cindex` is the fold spread, the `mean` row's `cindex_seed_std` the mean seed spread.
`cindex_common` scores each model on the fold's test patients that every evaluated model scores
(`n_common`), so a unimodal and a multimodal model can be compared on the same patients.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from healnet.survival.metrics import cindex, pycox_metrics

log = logging.getLogger(__name__)

METRICS = ["cindex", "cindex_td", "ibs"]
# seeds: training runs averaged in the fold's row; cindex_seed_std: their spread (ddof 0);
# cindex_common / n_common: the c-index on the test patients that every evaluated model scores.
EXTRA = ["seeds", "cindex_seed_std", "cindex_common", "n_common"]
COLUMNS = ["model", "fold", *METRICS, "n", "events", "excluded", *EXTRA]
MISSING_COLUMNS = ["model", "scenario", "fold", *METRICS, "n", "events", "excluded"]


def fold_number(path: str | Path) -> int:
    m = re.search(r"fold(\d+)", Path(path).name)
    if not m:
        raise ValueError(f"fold file {path}: name must contain fold<k> (e.g. fold0.tsv)")
    return int(m.group(1))


def surv_matrix(pred: pd.DataFrame) -> np.ndarray:
    cols = sorted((c for c in pred.columns if c.startswith("surv_")), key=lambda c: int(c.split("_")[1]))
    if not cols:
        raise ValueError("predictions have no surv_<j> columns; regenerate them with `healnet train`")
    return pred[cols].to_numpy(dtype=float)


def metrics_of(pred: pd.DataFrame, edges: Sequence[float], n_grid: int = 100) -> dict:
    """c-index (published convention), pycox time-dependent c-index and IBS, n, events."""
    time, event = pred["time"].to_numpy(float), pred["event"].to_numpy(int)
    row = {"cindex": cindex(time, event, pred["risk"].to_numpy(float)), "cindex_td": math.nan, "ibs": math.nan}
    if len(pred) >= 2 and event.any():
        row["cindex_td"], row["ibs"] = pycox_metrics(surv_matrix(pred), np.asarray(edges), time, event, n_grid)
    row.update(n=len(pred), events=int(event.sum()))
    return row


def first_seed(pred: pd.DataFrame) -> pd.DataFrame:
    """The rows of the first training seed of a predictions.tsv (one row per patient)."""
    return pred[pred["seed"] == pred["seed"].min()] if "seed" in pred.columns else pred


def seed_metrics(
    pred: pd.DataFrame, edges: Sequence[float], n_grid: int = 100, patients: set[str] | None = None
) -> dict:
    """`metrics_of` per training seed of a predictions.tsv, averaged; `cindex_seed_std` their spread.

    `patients`: score only these case_ids (the same-patients comparison)."""
    seeds = sorted(pred["seed"].unique()) if "seed" in pred.columns else [0]
    per_seed = []
    for s in seeds:
        p = pred[pred["seed"] == s] if "seed" in pred.columns else pred
        if patients is not None:
            p = p[p["case_id"].isin(patients)]
        per_seed.append(metrics_of(p, edges, n_grid))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        row = {m: float(np.nanmean([r[m] for r in per_seed])) for m in METRICS}
        row["cindex_seed_std"] = float(np.nanstd([r["cindex"] for r in per_seed]))
    row.update(n=per_seed[0]["n"], events=per_seed[0]["events"], seeds=len(seeds))
    return row


def with_summary(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Append `mean` and `std` rows (over folds, NaN folds ignored) per group of `keys`."""
    out = [rows]
    num = [c for c in (*METRICS, "n", "events", "excluded", *EXTRA) if c in rows.columns]
    for group, df in rows.groupby(keys, sort=False):
        group = group if isinstance(group, tuple) else (group,)
        values = df[num].to_numpy(dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a metric NaN in every fold stays NaN
            stats = {"mean": np.nanmean(values, axis=0), "std": np.nanstd(values, axis=0)}
        for stat, v in stats.items():
            out.append(pd.DataFrame([{**dict(zip(keys, group)), "fold": stat, **dict(zip(num, v))}]))
    table = pd.concat(out, ignore_index=True)
    per_fold = ~table["fold"].isin(["mean", "std"])
    for col in [
        c for c in ("n", "events", "excluded", "seeds", "n_common") if c in table.columns
    ]:  # counts stay integers in the per-fold rows
        table[col] = pd.Series([int(v) if f and v == v else v for f, v in zip(per_fold, table[col])], dtype=object)
    return table


def cindex_table(cohort, models: Sequence[str], eval_cfg) -> pd.DataFrame:
    """cindex.tsv's table for `models` of `cohort` (a `healnet.evaluate.runs.CohortRuns`)."""
    rows = []
    for model in models:
        for k in cohort.folds:
            pred, info = cohort.predictions(model, k), cohort.info(model, k)
            row = {"model": model, "fold": str(k), **seed_metrics(pred, info["edges"], eval_cfg.ibs_grid_points)}
            row["excluded"] = cohort.n_test(k) - row["n"]
            if row["excluded"]:
                # by design, and in the table (`excluded`): INFO, so a clean run prints no warning
                log.info(
                    "model %s fold %d: %d test patients without any of its modalities %s, left out",
                    model,
                    k,
                    row["excluded"],
                    info["modalities"],
                )
            rows.append(row)
            log.info(
                "model %s fold %d: c-index %.4f (n %d, events %d, %d seed(s))",
                model,
                k,
                row["cindex"],
                row["n"],
                row["events"],
                row["seeds"],
            )
    for row in rows:  # the same-patients comparison: the test patients every model scores
        k = int(row["fold"])
        common = set.intersection(*(set(first_seed(cohort.predictions(m, k))["case_id"]) for m in models))
        edges = cohort.info(row["model"], k)["edges"]
        row["cindex_common"] = seed_metrics(
            cohort.predictions(row["model"], k), edges, eval_cfg.ibs_grid_points, common
        )["cindex"]
        row["n_common"] = len(common)
    return with_summary(pd.DataFrame(rows, columns=COLUMNS), ["model"])[COLUMNS]
