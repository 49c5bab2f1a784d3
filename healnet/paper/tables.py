"""Table 1 and Table 2 of the paper from the per-cohort evaluation tables.

Inputs per cohort `c` (written by `healnet paper cohort`, see `healnet.paper.cohort`):
- `results/paper/{c}/cindex.tsv`: `healnet.evaluate` format, one row per model and fold plus
  `mean` and `std` rows (std over folds, ddof 0);
- `results/paper/{c}/cindex_missing.tsv`: the same per (model, scenario); `one_random` is the
  paper's protocol (each test patient given one of its modalities, 50/50 by seed);
- `results/paper/{c}/xor.tsv`: the XOR baseline in the `cindex_missing.tsv` format.

Table 1: c-index mean +- std over folds, one row per model, per cohort `<c>_mean`, `<c>_std`,
`<c>_folds` (folds with a defined c-index) and `<c>_published` (the paper's value, NaN if none).
Table 2: the XOR baseline, then for each multimodal model its c-index with one modality per patient
(`one_random`) and with all modalities (`all`, Table 1's value), with the same columns.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from healnet.io import write_text, write_tsv
from healnet.modalities import WSI

log = logging.getLogger(__name__)

XOR = "xor"
PUBLISHED_SOURCE = "healnet"  # the paper's Table 1 / Table 2 (published.tsv)
CITATION = (
    "Published: Hemker, Simidjievski, Jamnik, HEALNet: Multimodal Fusion for Heterogeneous Biomedical "
    "Data, NeurIPS 2024 (Table 1; Table 2 for missing modalities); c-index mean over 5 folds."
)


def load_published() -> pd.DataFrame:
    """The published c-index values: source, table, model, cohort, cindex (healnet/paper/published.tsv)."""
    with resources.files("healnet.paper").joinpath("published.tsv").open() as fh:
        return pd.read_csv(fh, sep="\t", comment="#", dtype={"cindex": float})


def published_value(
    published: pd.DataFrame, table: str, row: str | None, cohort_key: str, source: str = PUBLISHED_SOURCE
) -> float:
    """One published c-index, NaN when the paper has none (e.g. the demo cohort)."""
    if row is None:
        return math.nan
    hit = published[
        (published["source"] == source)
        & (published["table"] == table)
        & (published["model"] == row)
        & (published["cohort"] == cohort_key)
    ]
    return float(hit["cindex"].iloc[0]) if len(hit) else math.nan


def published_key(cohort: str, gdc_project: str | None = None) -> str:
    """The published column of a cohort: its TCGA project (TCGA-BLCA -> blca), else its name."""
    return (gdc_project or cohort).lower().removeprefix("tcga-")


def is_multimodal(modalities: Sequence[str]) -> bool:
    """Slides and at least one tabular modality (the paper's multimodal models)."""
    return WSI in modalities and any(m != WSI for m in modalities)


def read_table(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"fold": str, "model": str})


def fold_summary(table: pd.DataFrame, path: str | Path, model: str, scenario: str | None = None) -> dict:
    """mean, std (the table's summary rows) and the number of folds with a c-index, of one model;
    NaN and 0 folds (logged) when the table has no rows for it."""
    rows = table[table["model"] == model]
    if scenario is not None:
        rows = rows[rows["scenario"] == scenario]
    if rows.empty:  # e.g. a slide-only model on a cohort without slides (not trained there)
        what = f"model {model}" + (f" scenario {scenario}" if scenario else "")
        log.warning("%s: no rows for %s (not trained or not applicable in this cohort); cell left empty", path, what)
        return {"mean": math.nan, "std": math.nan, "folds": 0}
    stat = rows.set_index("fold")["cindex"]
    folds = rows[rows["fold"].str.fullmatch(r"\d+")]
    return {
        "mean": float(stat.get("mean", math.nan)),
        "std": float(stat.get("std", math.nan)),
        "folds": int(folds["cindex"].notna().sum()),
    }


def _wide(rows: list[dict], cohorts: Sequence[str], first: list[str]) -> pd.DataFrame:
    cols = first + [f"{c}_{k}" for c in cohorts for k in ("mean", "std", "folds", "published")]
    return pd.DataFrame(rows, columns=cols)


def table1(
    cindex: Mapping[str, tuple[str | Path, pd.DataFrame]],
    models: Sequence[str],
    modalities: Mapping[str, Sequence[str]],
    published_as: Mapping[str, str],
    cohort_keys: Mapping[str, str],
    published: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Models x cohorts: c-index mean, std, folds and the published value.

    `cindex`: cohort -> (path, its cindex.tsv table); the cohorts' order is the columns' order.
    """
    published = load_published() if published is None else published
    rows = []
    for model in models:
        row: dict = {"model": model, "modalities": "+".join(modalities[model])}
        for c, (path, table) in cindex.items():
            s = fold_summary(table, path, model)
            row.update({f"{c}_{k}": v for k, v in s.items()})
            row[f"{c}_published"] = published_value(published, "table1", published_as.get(model), cohort_keys[c])
        rows.append(row)
    return _wide(rows, list(cindex), ["model", "modalities"])


def table2(
    cindex: Mapping[str, tuple[str | Path, pd.DataFrame]],
    missing: Mapping[str, tuple[str | Path, pd.DataFrame]],
    xor: Mapping[str, tuple[str | Path, pd.DataFrame]],
    models: Sequence[str],
    modalities: Mapping[str, Sequence[str]],
    missing_model: str | None,
    unimodal: Mapping[str, str],
    published_as: Mapping[str, str],
    cohort_keys: Mapping[str, str],
    published: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Missing modalities at inference: XOR baseline vs each multimodal model, one modality and all.

    A cohort where the model could not be given one modality (e.g. no slides at all) has NaN cells.
    """
    published = load_published() if published is None else published
    cohorts = list(cindex)
    multimodal = [m for m in models if is_multimodal(modalities[m])]
    if missing_model and is_multimodal(modalities[missing_model]):  # the paper's comparison first
        multimodal = [missing_model] + [m for m in multimodal if m != missing_model]
    rows = []
    if missing_model:
        pair = ", ".join(f"{mod}: {m}" for mod, m in unimodal.items())
        row: dict = {
            "row": XOR,
            "model": f"xor ({pair})",
            "scenario": "one_random",
            "description": "each test patient predicted by the unimodal model of the one modality it is given",
        }
        for c in cohorts:
            path, table = xor[c]
            row.update({f"{c}_{k}": v for k, v in fold_summary(table, path, XOR, "one_random").items()})
            row[f"{c}_published"] = published_value(published, "table2", XOR, cohort_keys[c])
        rows.append(row)
    for model in multimodal:
        pub = published_as.get(model)
        for scenario, desc in (
            ("one_random", "each test patient given one of its modalities (50/50 by seed)"),
            ("all", "all modalities (Table 1)"),
        ):
            row = {"row": f"{model}:{scenario}", "model": model, "scenario": scenario, "description": desc}
            for c in cohorts:
                if scenario == "all":
                    s = fold_summary(cindex[c][1], cindex[c][0], model)
                    p = published_value(published, "table1", pub, cohort_keys[c])
                else:
                    s = fold_summary(missing[c][1], missing[c][0], model, scenario)
                    p = published_value(published, "table2", pub, cohort_keys[c])
                row.update({f"{c}_{k}": v for k, v in s.items()})
                row[f"{c}_published"] = p
            rows.append(row)
    return _wide(rows, cohorts, ["row", "model", "scenario", "description"])


def _by_cohort(cohorts: Sequence[str], paths: Sequence[str | Path]) -> dict[str, tuple[str | Path, pd.DataFrame]]:
    return {c: (p, read_table(p)) for c, p in zip(cohorts, paths)}


def _cell(mean: float, std: float) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if np.isfinite(std) else f"{mean:.3f}"


def markdown(table: pd.DataFrame, cohorts: Sequence[str], label_cols: Sequence[str], title: str) -> str:
    """A Markdown table: label columns, then per cohort `ours` (mean ± std) and `published`."""
    head = list(label_cols) + [h for c in cohorts for h in (f"{c} (ours)", f"{c} (published)")]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [str(r[c]) for c in label_cols]
        for c in cohorts:
            pub = r[f"{c}_published"]
            cells += [_cell(r[f"{c}_mean"], r[f"{c}_std"]), f"{pub:.3f}" if np.isfinite(pub) else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(
    cohorts: Sequence[str],
    cindex_paths: Sequence[str | Path],
    missing_paths: Sequence[str | Path],
    xor_paths: Sequence[str | Path],
    paper_cfg,
    modalities: Mapping[str, Sequence[str]],
    cohort_keys: Mapping[str, str],
    out_table1: str | Path,
    out_table1_md: str | Path,
    out_table2: str | Path,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write table1.tsv, table1.md (Table 1 and Table 2) and table2.tsv; `paper_cfg` is config.Paper."""
    if not (len(cohorts) == len(cindex_paths) == len(missing_paths) == len(xor_paths)):
        raise ValueError(
            f"{len(cohorts)} cohorts but {len(cindex_paths)} cindex, {len(missing_paths)} missing and "
            f"{len(xor_paths)} xor tables; pass one of each per cohort, in the same order"
        )
    cindex, missing, xor = (_by_cohort(cohorts, paths) for paths in (cindex_paths, missing_paths, xor_paths))
    published = load_published()
    rows = list(paper_cfg.models) + [m for m in paper_cfg.references if m not in paper_cfg.models]
    t1 = table1(cindex, rows, modalities, paper_cfg.published_as, cohort_keys, published)
    t2 = table2(
        cindex,
        missing,
        xor,
        paper_cfg.models,
        modalities,
        paper_cfg.missing_model,
        paper_cfg.unimodal,
        paper_cfg.published_as,
        cohort_keys,
        published,
    )
    write_tsv(t1, out_table1, float_format="%.4f")
    write_tsv(t2, out_table2, float_format="%.4f")
    md = (
        markdown(t1, cohorts, ["model", "modalities"], "Table 1: c-index (mean ± std over folds)")
        + "\n"
        + markdown(t2, cohorts, ["model", "scenario"], "Table 2: missing modalities at inference (c-index)")
        + f"\n{CITATION} Cohort columns without a published value show –."
        + (
            f" Classical references (fitted on each fold's training patients): {', '.join(paper_cfg.references)}."
            if paper_cfg.references
            else ""
        )
        + "\n"
    )
    write_text(md, out_table1_md)
    for _, r in t1.iterrows():
        log.info(
            "table 1 %s: %s", r["model"], ", ".join(f"{c} {_cell(r[f'{c}_mean'], r[f'{c}_std'])}" for c in cohorts)
        )
    return t1, t2
