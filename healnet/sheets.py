"""Sample sheets: `case_id`, `slide_id`, `path`, optional `mpp`; one row per slide."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from healnet.io import cached_while_unchanged

REQUIRED = ["case_id", "slide_id", "path"]
OPTIONAL = ["mpp"]


def read_sample_sheet(path: str | Path, check_files: bool = True) -> pd.DataFrame:
    """Read and check a sample sheet; every problem is an error naming the file, row and fix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sample sheet {path} does not exist; check `cohorts.<name>.slides` in the config")
    sheet = pd.read_csv(path, sep="\t", dtype={"case_id": str, "slide_id": str, "path": str})
    missing = [c for c in REQUIRED if c not in sheet.columns]
    if missing:
        raise ValueError(
            f"sample sheet {path}: missing column(s) {missing}; found {list(sheet.columns)}. "
            f"A sample sheet is a TSV with columns {REQUIRED} and optionally {OPTIONAL}."
        )
    unknown = [c for c in sheet.columns if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise ValueError(f"sample sheet {path}: unknown column(s) {unknown}; allowed: {REQUIRED + OPTIONAL}")
    for col in REQUIRED:
        empty = sheet.index[sheet[col].isna() | (sheet[col].astype(str).str.strip() == "")]
        if len(empty):
            rows = ", ".join(str(i + 2) for i in empty)  # +2: header line, 1-based
            raise ValueError(f"sample sheet {path}: empty `{col}` in line(s) {rows}; fill it in or drop the row")
    dup = sheet["slide_id"].duplicated(keep=False)
    if dup.any():
        lines = ", ".join(
            f"{sid!r} (lines {', '.join(str(i + 2) for i in grp.index)})" for sid, grp in sheet[dup].groupby("slide_id")
        )
        raise ValueError(f"sample sheet {path}: duplicate slide_id {lines}; each slide must appear once")
    bad_ids = sheet["slide_id"][sheet["slide_id"].str.contains(r"[/\s]", regex=True)]
    if len(bad_ids):
        raise ValueError(
            f"sample sheet {path}: slide_id must not contain '/' or spaces (used in file names): {list(bad_ids)}"
        )
    if "mpp" in sheet.columns:
        sheet["mpp"] = pd.to_numeric(sheet["mpp"], errors="coerce")
        bad = sheet.index[sheet["mpp"].notna() & (sheet["mpp"] <= 0)]
        if len(bad):
            raise ValueError(f"sample sheet {path}: `mpp` must be > 0 (line(s) {', '.join(str(i + 2) for i in bad)})")
    else:
        sheet["mpp"] = float("nan")
    if check_files:  # the workflow's start-up check; later readers (training, QC) only map slides to cases
        _check_same_file(sheet, path, key=lambda p: os.path.realpath(p), what="the same path")
        absent = [(i + 2, p) for i, p in sheet["path"].items() if not Path(p).exists()]
        if absent:
            listing = "; ".join(f"line {line}: {p}" for line, p in absent[:10])
            more = f" (and {len(absent) - 10} more)" if len(absent) > 10 else ""
            raise FileNotFoundError(
                f"sample sheet {path}: slide file(s) not found: {listing}{more}. "
                "Paths are relative to the working directory; fix the `path` column or fetch the slides."
            )
        # Same content under two names (a copy, a link): only files of equal size can be equal, so only
        # those are hashed; real slides almost never share a size, so this reads next to nothing.
        sizes = sheet["path"].map(lambda p: os.stat(p).st_size)
        shared = sizes.duplicated(keep=False)
        _check_same_file(
            sheet[shared],
            path,
            key=lambda p: _head_digest(p, *_stamp(p)),
            what=f"the same content (size and sha256 of the first {HEAD_BYTES >> 20} MiB)",
        )
    return sheet


HEAD_BYTES = 1 << 20


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=65536)
def _head_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of the first MiB, with the size; cached per (path, size, mtime) for the process."""
    with open(path, "rb") as fh:
        return f"{size}:{hashlib.sha256(fh.read(HEAD_BYTES)).hexdigest()}"


def _check_same_file(sheet: pd.DataFrame, path: Path, key: Callable[[str], str], what: str) -> None:
    """One slide file under two slide ids (a patient counted twice, or two patients sharing a slide)
    is an error naming both lines."""
    keys = sheet["path"].map(key)
    dup = keys.duplicated(keep=False)
    if not dup.any():
        return
    groups = []
    for _, grp in sheet[dup].groupby(keys[dup], sort=False):
        rows = [
            f"line {i + 2} (slide_id {r.slide_id!r}, case_id {r.case_id!r}, path {r.path})"
            for i, r in zip(grp.index, grp.itertuples())
        ]
        groups.append(" and ".join(rows))
    raise ValueError(
        f"sample sheet {path}: one slide file under several slide ids, by {what}: {'; '.join(groups[:10])}. "
        "Keep one row per slide file (a patient with several slides has one row per distinct file)."
    )


@dataclass(frozen=True)
class IndexedSheet:
    """A checked sample sheet with O(1) lookup by slide id (what the workflow's input functions need)."""

    frame: pd.DataFrame
    rows: dict[str, dict]

    def row(self, slide_id: str) -> dict | None:
        return self.rows.get(slide_id)


@cached_while_unchanged
def indexed_sample_sheet(path: str | Path) -> IndexedSheet:
    """The sheet at `path`, read and checked once per process while the file is unchanged.

    Snakemake calls input functions for every job (three per slide); reading and checking the sheet
    each time made building the DAG quadratic in the number of slides.
    """
    frame = read_sample_sheet(path)
    return IndexedSheet(frame, {r["slide_id"]: r for r in frame.to_dict("records")})
