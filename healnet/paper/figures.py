"""Figure 2 of the paper: percentage uplift of each multimodal model over the best unimodal model.

Per cohort, the best unimodal model is the one of the paper's models using a single kind of data
(slides only, or tabular only) with the highest mean c-index over folds. For each multimodal model
and fold k the uplift is 100 * (c_model,k / c_best,k - 1); the bar is its mean over folds, the error
bar its std (ddof 0, as in the tables). A last group averages the cohorts' bars. The published
uplift (Table 1 of the paper, best of its unimodal rows) is drawn as a marker where it exists.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from healnet.io import atomic_path, write_tsv
from healnet.paper.tables import is_multimodal, load_published, published_value, read_table

log = logging.getLogger(__name__)

UPLIFT_COLUMNS = ["cohort", "model", "best_unimodal", "uplift_mean", "uplift_std", "folds", "published_uplift"]
MEAN_GROUP = "mean over cohorts"


def fold_cindex(table: pd.DataFrame, model: str) -> pd.Series:
    """c-index per fold (index: fold number) of one model from a cindex.tsv table."""
    rows = table[(table["model"] == model) & table["fold"].str.fullmatch(r"\d+")]
    return rows.set_index(rows["fold"].astype(int))["cindex"].astype(float)


def uplift_table(
    cindex: Mapping[str, pd.DataFrame],
    models: Sequence[str],
    modalities: Mapping[str, Sequence[str]],
    published_as: Mapping[str, str] | None = None,
    cohort_keys: Mapping[str, str] | None = None,
    published: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per (cohort, multimodal model), plus the `mean over cohorts` rows."""
    uni = [m for m in models if not is_multimodal(modalities[m])]
    multi = [m for m in models if is_multimodal(modalities[m])]
    published = load_published() if published is None else published
    published_as = published_as or {}
    rows = []
    for cohort, table in cindex.items():
        if not uni or not multi:
            log.warning("cohort %s: uplift needs unimodal and multimodal models among %s", cohort, list(models))
            break
        means = {m: fold_cindex(table, m).mean() for m in uni}
        best = max(means, key=lambda m: -math.inf if np.isnan(means[m]) else means[m])
        base = fold_cindex(table, best)
        key = (cohort_keys or {}).get(cohort, cohort)
        pub_uni = [published_value(published, "table1", published_as.get(m), key) for m in uni]
        pub_best = max((p for p in pub_uni if np.isfinite(p)), default=math.nan)
        for model in multi:
            per_fold = (100 * (fold_cindex(table, model) / base - 1)).dropna()
            pub = published_value(published, "table1", published_as.get(model), key)
            rows.append(
                {
                    "cohort": cohort,
                    "model": model,
                    "best_unimodal": best,
                    "uplift_mean": per_fold.mean() if len(per_fold) else math.nan,
                    "uplift_std": per_fold.std(ddof=0) if len(per_fold) else math.nan,
                    "folds": len(per_fold),
                    "published_uplift": 100 * (pub / pub_best - 1)
                    if np.isfinite(pub) and np.isfinite(pub_best)
                    else math.nan,
                }
            )
    df = pd.DataFrame(rows, columns=UPLIFT_COLUMNS)
    if len(df):
        mean = (
            df.groupby("model", sort=False)
            .agg(
                uplift_mean=("uplift_mean", "mean"),
                uplift_std=("uplift_mean", lambda v: v.std(ddof=0)),
                folds=("folds", "sum"),
                published_uplift=("published_uplift", "mean"),
            )
            .reset_index()
        )
        mean["cohort"], mean["best_unimodal"] = MEAN_GROUP, ""
        df = pd.concat([df, mean[UPLIFT_COLUMNS]], ignore_index=True)
    return df


def plot_uplift(table: pd.DataFrame, out_png: str | Path, title: str = "Uplift over the best unimodal model") -> None:
    """Grouped bars (cohorts x multimodal models) with fold std and the published uplift as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * max(1, table["cohort"].nunique()) + 2), 4), dpi=120)
    if table.empty:
        ax.text(
            0.5,
            0.5,
            "no uplift: the paper models need both unimodal and multimodal models",
            ha="center",
            va="center",
            wrap=True,
            transform=ax.transAxes,
        )
        ax.axis("off")
    else:
        cohorts = list(dict.fromkeys(table["cohort"]))
        models = list(dict.fromkeys(table["model"]))
        width = 0.8 / len(models)
        x = np.arange(len(cohorts))
        for j, model in enumerate(models):
            sub = table[table["model"] == model].set_index("cohort").reindex(cohorts)
            pos = x - 0.4 + width * (j + 0.5)
            ax.bar(pos, sub["uplift_mean"], width, yerr=sub["uplift_std"].fillna(0), capsize=3, label=model)
            ok = sub["published_uplift"].notna().to_numpy()
            if ok.any():
                ax.scatter(
                    pos[ok],
                    sub["published_uplift"][ok],
                    marker="x",
                    color="black",
                    zorder=3,
                    label="published" if j == 0 else None,
                )
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xticks(x, [c if c == MEAN_GROUP else f"{c}\n(vs {_best(table, c)})" for c in cohorts], fontsize=8)
        ax.set_ylabel("c-index uplift (%)")
        ax.legend(fontsize=8, ncols=2)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _best(table: pd.DataFrame, cohort: str) -> str:
    return str(table.loc[table["cohort"] == cohort, "best_unimodal"].iloc[0])


def write_uplift(
    cohorts: Sequence[str],
    cindex_paths: Sequence[str | Path],
    paper_cfg,
    modalities: Mapping[str, Sequence[str]],
    cohort_keys: Mapping[str, str],
    out_png: str | Path,
    out_tsv: str | Path,
) -> pd.DataFrame:
    """uplift.tsv and uplift.png from the per-cohort cindex.tsv files; `paper_cfg` is config.Paper."""
    if len(cohorts) != len(cindex_paths):
        raise ValueError(f"{len(cohorts)} cohorts but {len(cindex_paths)} cindex tables; pass one per cohort, in order")
    cindex = {c: read_table(p) for c, p in zip(cohorts, cindex_paths)}
    table = uplift_table(cindex, paper_cfg.models, modalities, paper_cfg.published_as, cohort_keys)
    write_tsv(table, out_tsv, float_format="%.4f")
    plot_uplift(table, out_png)
    for _, r in table.iterrows():
        log.info(
            "uplift %s %s: %.2f %% +- %.2f (vs %s)",
            r["cohort"],
            r["model"],
            r["uplift_mean"],
            r["uplift_std"],
            r["best_unimodal"] or "each cohort's best",
        )
    return table
