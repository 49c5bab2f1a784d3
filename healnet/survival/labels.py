"""Discrete-time survival labels (stage `labels`), by the convention of MCAT / PORPOISE / HEALNet.

`event = 1 - censorship` (censorship 1 = alive at last follow-up). The `n_bins` bins are the
quantiles of the *uncensored* patients' survival months (linear interpolation, as `pandas.qcut`),
with the outer edges replaced by the cohort's min - eps and max + eps (all patients), and
left-closed intervals [q_j, q_{j+1}). Every patient, censored or not, gets a bin.

`labels.tsv` holds the bins from the whole cohort (what the published baselines do and what the
splits stratify on). With `labels.edges_from: train`, training recomputes the edges (`bin_edges`)
from each fold's training patients instead (healnet/training/data.py); `bins_for_fold` gives a fold's
bins by either rule.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from healnet.config import Labels
from healnet.io import read_stage_tsv, write_tsv
from healnet.omics.tables import read_survival

log = logging.getLogger(__name__)

COLUMNS = ["case_id", "survival_months", "censorship", "event", "bin"]


def bin_edges(times: np.ndarray, events: np.ndarray, n_bins: int, eps: float = 1e-6) -> np.ndarray:
    """The n_bins + 1 edges: quantiles of event times, outer edges at min/max of all times -/+ eps."""
    times = np.asarray(times, dtype=float)
    events = np.asarray(events).astype(bool)
    if not events.any():
        raise ValueError(f"no uncensored patient among {len(times)}: survival bins need observed events")
    edges = np.quantile(times[events], np.linspace(0, 1, n_bins + 1))
    edges[0] = times.min() - eps
    edges[-1] = times.max() + eps
    if np.any(np.diff(edges) <= 0):
        raise ValueError(
            f"survival bin edges {np.round(edges, 3).tolist()} are not strictly increasing "
            f"({int(events.sum())} events for {n_bins} bins, tied times); use fewer bins (labels.n_bins)"
        )
    return edges


def assign_bins(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each time with left-closed intervals; times beyond the outer edges go to the end bins."""
    return np.searchsorted(np.asarray(edges)[1:-1], np.asarray(times, dtype=float), side="right").astype(int)


def make_labels(survival: pd.DataFrame, cfg: Labels) -> tuple[pd.DataFrame, np.ndarray]:
    """labels.tsv content from per-patient `survival_months`, `censorship` (indexed by case_id)."""
    event = 1 - survival["censorship"].astype(int)
    edges = bin_edges(survival["survival_months"].to_numpy(), event.to_numpy(), cfg.n_bins, cfg.eps)
    labels = pd.DataFrame(
        {
            "case_id": survival.index.astype(str),
            "survival_months": survival["survival_months"].to_numpy(),
            "censorship": survival["censorship"].astype(int).to_numpy(),
            "event": event.to_numpy(),
            "bin": assign_bins(survival["survival_months"].to_numpy(), edges),
        }
    )
    return labels, edges


def build_labels(table_path: str | Path, output: str | Path, cfg: Labels) -> dict:
    """Stage `labels`: write labels.tsv; returns a summary for the log."""
    labels, edges = make_labels(read_survival(table_path), cfg)
    write_tsv(labels, output)
    summary = {
        "patients": len(labels),
        "events": int(labels["event"].sum()),
        "censored_fraction": round(float(labels["censorship"].mean()), 3),
        "edges": [round(float(e), 3) for e in edges],
        "per_bin": labels["bin"].value_counts().sort_index().tolist(),
    }
    log.info("labels %s -> %s: %s", table_path, output, summary)
    return summary


def load_labels(path: str | Path) -> pd.DataFrame:
    """labels.tsv indexed by `case_id` (columns survival_months, censorship, event, bin), checked."""
    df = read_stage_tsv(path, "labels file", "labels")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"labels file {path}: missing column(s) {missing}; expected {COLUMNS}; regenerate it")
    return (
        df[COLUMNS].set_index("case_id").astype({"survival_months": float, "censorship": int, "event": int, "bin": int})
    )


def bins_for_fold(labels: pd.DataFrame, train_ids: Iterable[str], cfg: Labels) -> tuple[pd.Series, np.ndarray]:
    """(each patient's bin, the n_bins + 1 edges) for one fold: labels.tsv's cohort bins with the
    cohort's edges, or edges from the fold's training patients (`labels.edges_from: train`).

    `labels` is `load_labels`'s table (indexed by case_id). The one place fold bins are made."""
    if cfg.edges_from == "cohort":
        edges = bin_edges(labels["survival_months"].to_numpy(), labels["event"].to_numpy(), cfg.n_bins, cfg.eps)
        return labels["bin"].copy(), np.asarray(edges, dtype=float)
    train = labels.loc[labels.index.intersection(pd.Index(list(train_ids)))]
    edges = bin_edges(train["survival_months"].to_numpy(), train["event"].to_numpy(), cfg.n_bins, cfg.eps)
    bins = pd.Series(assign_bins(labels["survival_months"].to_numpy(), edges), index=labels.index, name="bin")
    return bins, np.asarray(edges, dtype=float)
