"""Kaplan-Meier curves of predicted low- and high-risk patients, per cohort (`healnet km-plot`).

Each fold's held-out (`test`) patients are split at the median predicted risk *of that fold*:
risks of models trained on different folds are not on a common scale, so a pooled threshold would
mix them. The groups of all folds are then pooled and one Kaplan-Meier curve per group is drawn,
with the log-rank test between them (scikit-survival), one panel per model. This is the usual
stratification plot of the PORPOISE / HEALNet line of papers, computed on evaluation patients only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from healnet.io import atomic_path, write_tsv

log = logging.getLogger(__name__)

GROUPS = ("low", "high")
STATS_COLUMNS = [
    "model",
    "n",
    "events",
    "n_low",
    "n_high",
    "events_low",
    "events_high",
    "median_months_low",
    "median_months_high",
    "chi2",
    "p_value",
]


def load_predictions(paths: Sequence[str | Path]) -> pd.DataFrame:
    """All predictions with `model` and `fold` columns (from each file's path)."""
    from healnet.runs import run_of

    frames = []
    for path in paths:
        model, fold = run_of(path)
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"predictions file {path} does not exist; run `healnet train` for {model} fold {fold}"
            )
        df = pd.read_csv(path, sep="\t", dtype={"case_id": str})
        missing = {"case_id", "risk", "time", "event"} - set(df.columns)
        if missing:
            raise ValueError(
                f"predictions file {path}: missing columns {sorted(missing)}; regenerate it with `healnet train`"
            )
        from healnet.evaluate.metrics import first_seed

        frames.append(first_seed(df).assign(model=model, fold=fold))  # seed 0: one row per patient
    if not frames:
        raise ValueError(
            "no predictions files given; pass --predictions results/<cohort>/models/*/fold*/predictions.tsv"
        )
    return pd.concat(frames, ignore_index=True)


def risk_groups(pred: pd.DataFrame) -> pd.DataFrame:
    """Add `group` (low/high): above the median risk of the same model and fold is `high`."""
    median = pred.groupby(["model", "fold"])["risk"].transform("median")
    return pred.assign(group=np.where(pred["risk"] > median, "high", "low"))


def _surv_array(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    y = np.empty(len(time), dtype=[("event", bool), ("time", float)])
    y["event"], y["time"] = event.astype(bool), time.astype(float)
    return y


def km_curve(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier estimate as step points starting at (0, 1)."""
    from sksurv.nonparametric import kaplan_meier_estimator

    if len(time) == 0:
        return np.array([0.0]), np.array([1.0])
    t, s = kaplan_meier_estimator(np.asarray(event, bool), np.asarray(time, float))
    return np.concatenate([[0.0], t]), np.concatenate([[1.0], s])


def median_survival(time: np.ndarray, event: np.ndarray) -> float:
    """First time the KM curve reaches 0.5 or below; NaN if it never does."""
    t, s = km_curve(time, event)
    below = np.nonzero(s <= 0.5)[0]
    return float(t[below[0]]) if len(below) else math.nan


def logrank(time: np.ndarray, event: np.ndarray, group: np.ndarray) -> tuple[float, float]:
    """Log-rank chi2 and p-value between groups; NaN when it is undefined (one group, no event)."""
    from sksurv.compare import compare_survival

    if len(set(group)) < 2 or not np.any(event):
        return math.nan, math.nan
    chi2, p = compare_survival(_surv_array(np.asarray(time), np.asarray(event)), np.asarray(group))
    return float(chi2), float(p)


def km_stats(grouped: pd.DataFrame) -> pd.DataFrame:
    """One row per model: group sizes, events, median survival per group, log-rank test."""
    rows = []
    for model, df in grouped.groupby("model", sort=False):
        t, e, g = df["time"].to_numpy(float), df["event"].to_numpy(int), df["group"].to_numpy()
        chi2, p = logrank(t, e, g)
        row = {"model": model, "n": len(df), "events": int(e.sum()), "chi2": chi2, "p_value": p}
        for name in GROUPS:
            sel = g == name
            row[f"n_{name}"] = int(sel.sum())
            row[f"events_{name}"] = int(e[sel].sum())
            row[f"median_months_{name}"] = median_survival(t[sel], e[sel])
        rows.append(row)
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


def plot_km(grouped: pd.DataFrame, stats: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """One panel per model: KM curves of the low- and high-risk groups with the log-rank p-value."""
    import matplotlib

    matplotlib.use("Agg")  # no display on compute nodes
    import matplotlib.pyplot as plt

    models = list(stats["model"])
    ncols = min(3, len(models))
    nrows = math.ceil(len(models) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False, sharey=True)
    colours = {"low": "#1f77b4", "high": "#d62728"}
    for ax, (_, row) in zip(axes.flat, stats.iterrows()):
        df = grouped[grouped["model"] == row["model"]]
        for name in GROUPS:
            sel = df[df["group"] == name]
            t, s = km_curve(sel["time"].to_numpy(float), sel["event"].to_numpy(int))
            ax.step(
                t,
                s,
                where="post",
                color=colours[name],
                label=f"{name} risk (n={len(sel)}, {int(sel['event'].sum())} events)",
            )
            censored = sel[sel["event"] == 0]["time"].to_numpy(float)
            if len(censored):  # tick marks at censoring times, on the curve
                ax.plot(censored, s[np.searchsorted(t, censored, side="right") - 1], "|", color=colours[name], ms=6)
        p = row["p_value"]
        ax.set_title(
            f"{row['model']}: log-rank p = {p:.3g}" if p == p else f"{row['model']}: log-rank n/a", fontsize=10
        )
        ax.set_xlabel("months")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8, loc="best")
    for ax in axes[:, 0]:
        ax.set_ylabel("survival probability")
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)


def km_report(
    predictions: Sequence[str | Path], plot: str | Path, stats_path: str | Path, title: str = ""
) -> pd.DataFrame:
    """Read predictions, split into risk groups, write the KM figure and the log-rank table."""
    grouped = risk_groups(load_predictions(predictions))
    stats = km_stats(grouped)
    for _, row in stats.iterrows():
        log.info(
            "%s: %d low / %d high risk patients, log-rank chi2 %.3g p %.3g",
            row["model"],
            row["n_low"],
            row["n_high"],
            row["chi2"],
            row["p_value"],
        )
    write_tsv(stats, stats_path)
    plot_km(grouped, stats, plot, title)
    return stats


# --- Tables for the Snakemake report (it shows HTML inline, a TSV only as a download) ---

TABLE_CSS = """
body { font-family: sans-serif; font-size: 13px; margin: 12px; color: #222; }
h3 { font-size: 15px; margin: 0 0 8px 0; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #eef2f4; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
"""


def table_html(df: pd.DataFrame, title: str, source: str = "") -> str:
    """A self-contained HTML page with the table (floats to 4 significant digits, NaN empty)."""
    import html

    body = df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0, escape=True)
    note = f"<p>from <code>{html.escape(source)}</code></p>" if source else ""
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{TABLE_CSS}</style></head><body><h3>{html.escape(title)}</h3>{body}{note}</body></html>\n"
    )


def tsv_to_html(tsv: str | Path, out: str | Path, title: str) -> pd.DataFrame:
    """Render one TSV (e.g. cindex.tsv) as an HTML table page, written atomically."""
    from healnet.io import write_text

    tsv = Path(tsv)
    if not tsv.is_file():
        raise FileNotFoundError(f"table {tsv} does not exist; build it first (e.g. `snakemake --cores 1 {tsv}`)")
    df = pd.read_csv(tsv, sep="\t", keep_default_na=True)
    write_text(table_html(df, title, str(tsv)), out)
    return df
