"""Read and check a clinical + omics table in the TCGA format (one row per slide).

The table (``.csv`` or ``.csv.zip``, see ../shared/data/tcga/README.md) has metadata columns, listed
in config (`omics.metadata_columns`), and omic feature columns named ``<GENE>_<type>`` with type
rnaseq, cnv or mut. Any other column is an error: metadata is listed, never guessed. Rows are
slides; a patient can have several rows (which must agree) or a row with an empty ``slide_id``
(no slide). Every problem is an error that names the file, the column, the lines and the fix.
Line numbers are those of the CSV text (line 1 is the header).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from healnet.config import Omics
from healnet.modalities import CLINICAL, OMIC_TYPES

log = logging.getLogger(__name__)

# Clinical columns of the table -> their names as features (type suffix `clinical`).
CLINICAL_COLUMNS = {"age": "age_clinical", "is_female": "is_female_clinical"}
SURVIVAL_COLUMNS = ["survival_months", "censorship"]
MAX_LISTED = 10


def omic_type(column: str) -> str | None:
    """The omic type of a feature column (`TP53_mut` -> `mut`), or None."""
    for t in OMIC_TYPES + (CLINICAL,):
        if column.endswith(f"_{t}") and len(column) > len(t) + 1:
            return t
    return None


def lines(index: pd.Index | np.ndarray | list) -> str:
    """CSV line numbers (header = line 1) of 0-based row positions, abbreviated."""
    rows = [int(i) + 2 for i in index]
    text = ", ".join(str(r) for r in rows[:MAX_LISTED])
    return text + (f" (and {len(rows) - MAX_LISTED} more)" if len(rows) > MAX_LISTED else "")


def _read_csv(path: Path, usecols=None) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(
            f"clinical + omics table {path} does not exist; check `cohorts.<name>.clinical_omics` in the config"
        )
    try:
        # `.zip` is inferred from the name; the TCGA archives hold one CSV member.
        return pd.read_csv(path, usecols=usecols, dtype={"case_id": str, "slide_id": str}, low_memory=False)
    except (ValueError, pd.errors.ParserError, OSError) as err:
        raise ValueError(
            f"clinical + omics table {path}: cannot be read as CSV ({err}); expected .csv or .csv.zip"
        ) from err


def _check_case_ids(table: pd.DataFrame, path: Path) -> None:
    if "case_id" not in table.columns:
        raise ValueError(f"clinical + omics table {path}: no `case_id` column; found {list(table.columns[:12])} ...")
    empty = np.flatnonzero(table["case_id"].isna() | (table["case_id"].astype(str).str.strip() == ""))
    if len(empty):
        raise ValueError(
            f"clinical + omics table {path}: empty `case_id` in line(s) {lines(empty)}; fill it in or drop the rows"
        )


def _numeric(table: pd.DataFrame, columns: list[str], path: Path, what: str) -> pd.DataFrame:
    """The columns as float; a non-numeric cell is an error naming column and lines."""
    out = {}
    for col in columns:
        values = table[col]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            out[col] = values  # int columns stay int (written as `1`, not `1.0`)
            continue
        coerced = pd.to_numeric(values, errors="coerce")
        bad = np.flatnonzero(coerced.isna().to_numpy() & values.notna().to_numpy())
        if len(bad):
            examples = ", ".join(repr(v) for v in values.iloc[bad[:3]])
            raise ValueError(
                f"clinical + omics table {path}: non-numeric {what} value(s) in column `{col}`, line(s) {lines(bad)} "
                f"(e.g. {examples}); {what} cells must be numbers or empty"
            )
        out[col] = coerced.astype(float)
    return pd.DataFrame(out, index=table.index)


def check_agreement(table: pd.DataFrame, columns: list[str], path: Path) -> None:
    """Rows of one patient must carry identical values (NaN equals NaN) in `columns`."""
    codes, _ = pd.factorize(table["case_id"])
    if len(np.unique(codes)) == len(codes):
        return
    values = table[columns].to_numpy(dtype=float)
    _, first = np.unique(codes, return_index=True)  # first row position of each patient (codes are 0..k-1)
    ref = values[first[codes]]
    same = (values == ref) | (np.isnan(values) & np.isnan(ref))
    bad_rows = np.flatnonzero(~same.all(axis=1))
    if not len(bad_rows):
        return
    messages = []
    for case in pd.unique(table["case_id"].iloc[bad_rows])[:MAX_LISTED]:
        rows = np.flatnonzero((table["case_id"] == case).to_numpy())
        cols = [columns[j] for j in np.flatnonzero(~same[rows].all(axis=0))]
        shown = ", ".join(cols[:5]) + (f" (+{len(cols) - 5} more)" if len(cols) > 5 else "")
        messages.append(f"patient {case} (lines {lines(rows)}) in column(s) {shown}")
    n_cases = len(pd.unique(table["case_id"].iloc[bad_rows]))
    raise ValueError(
        f"clinical + omics table {path}: rows of the same patient disagree ({n_cases} patient(s)): "
        + "; ".join(messages)
        + ". Every row (slide) of a patient must carry the same survival and omics values; fix or drop the rows."
    )


def read_survival(path: str | Path) -> pd.DataFrame:
    """One row per patient: `survival_months`, `censorship` (int), indexed by `case_id`, checked."""
    path = Path(path)
    wanted = {"case_id", *SURVIVAL_COLUMNS}
    table = _read_csv(path, usecols=lambda c: c in wanted)
    _check_case_ids(table, path)
    missing = [c for c in SURVIVAL_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"clinical + omics table {path}: missing column(s) {missing}; the TCGA format needs {SURVIVAL_COLUMNS}"
        )
    values = _numeric(table, SURVIVAL_COLUMNS, path, "survival")
    months = values["survival_months"]
    bad = np.flatnonzero((months.isna() | (months < 0)).to_numpy())
    if len(bad):
        raise ValueError(
            f"clinical + omics table {path}: column `survival_months` is missing or negative in line(s) {lines(bad)} "
            f"(patients {', '.join(table['case_id'].iloc[bad[:5]])}); survival must be a time >= 0 in months"
        )
    cens = values["censorship"]
    bad = np.flatnonzero(~cens.isin([0, 1]).to_numpy())
    if len(bad):
        shown = ", ".join(repr(v) for v in table["censorship"].iloc[bad[:3]])
        raise ValueError(
            f"clinical + omics table {path}: column `censorship` must be 0 (event observed) or 1 (censored); "
            f"line(s) {lines(bad)} have {shown}"
        )
    values.insert(0, "case_id", table["case_id"])
    check_agreement(values, SURVIVAL_COLUMNS, path)
    patients = values.drop_duplicates("case_id").set_index("case_id")
    patients["censorship"] = patients["censorship"].astype(int)
    return patients


@dataclass
class OmicsTable:
    """A cohort's omics, one row per patient (indexed by `case_id`), before any fold statistics."""

    path: Path
    patients: pd.DataFrame  # every patient of the table; omic (+ clinical) feature columns, float
    columns: dict[str, list[str]]  # feature columns by type (rnaseq, cnv, mut[, clinical])
    n_rows: int

    @property
    def omic_columns(self) -> list[str]:
        return [c for t in OMIC_TYPES for c in self.columns.get(t, [])]

    def present(self) -> pd.Series:
        """True for patients with at least one omic value (all-empty = omics-missing)."""
        return self.patients[self.omic_columns].notna().any(axis=1)


def classify_columns(columns: list[str], cfg: Omics, path: Path) -> dict[str, list[str]]:
    """Omic feature columns by type; unknown columns are an error (metadata is listed in config)."""
    meta = set(cfg.metadata_columns) | {"case_id"}
    unknown = [c for c in columns if c not in meta and omic_type(c) not in OMIC_TYPES]
    if unknown:
        raise ValueError(
            f"clinical + omics table {path}: column(s) {unknown[:MAX_LISTED]} are neither metadata nor omic features "
            f"(suffix _rnaseq, _cnv or _mut); list them in `omics.metadata_columns` or rename them"
        )
    by_type = {t: [c for c in columns if c not in meta and omic_type(c) == t] for t in OMIC_TYPES}
    if not any(by_type.values()):
        raise ValueError(
            f"clinical + omics table {path}: no omic columns (names ending in _rnaseq, _cnv or _mut) among "
            f"{list(columns)[:12]}; this is not a TCGA clinical + omics table"
        )
    skipped = {t: len(v) for t, v in by_type.items() if v and t not in cfg.omic_types}
    if skipped:
        log.info("%s: skipping omic types not in omics.omic_types: %s", path, skipped)
    return {t: v for t, v in by_type.items() if t in cfg.omic_types}


def read_omics_table(path: str | Path, cfg: Omics) -> OmicsTable:
    """Read, check and reduce the table to one row per patient (rows of a patient must agree)."""
    path = Path(path)
    table = _read_csv(path)
    _check_case_ids(table, path)
    columns = classify_columns(list(table.columns), cfg, path)
    features = [c for t in OMIC_TYPES for c in columns.get(t, [])]
    values = _numeric(table, features, path, "omic")
    if cfg.clinical_features:
        absent = [c for c in CLINICAL_COLUMNS if c not in table.columns]
        if absent:
            raise ValueError(
                f"clinical + omics table {path}: omics.clinical_features is on but column(s) {absent} are missing; "
                "turn the flag off or add the columns"
            )
        clinical = _numeric(table, list(CLINICAL_COLUMNS), path, "clinical").rename(columns=CLINICAL_COLUMNS)
        values = pd.concat([values, clinical], axis=1)
        columns["clinical"] = list(CLINICAL_COLUMNS.values())
    values.insert(0, "case_id", table["case_id"])
    check_agreement(values, [c for c in values.columns if c != "case_id"], path)
    patients = values.drop_duplicates("case_id").set_index("case_id")
    return OmicsTable(path=path, patients=patients, columns=columns, n_rows=len(table))
