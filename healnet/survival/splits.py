"""Patient-level cross-validation folds (stage `splits`).

A fold file `results/{cohort}/splits/fold{k}.tsv` has `case_id` and `split`:
- `test`: the fold's held-out evaluation patients (the `val` column of the provided
  `splits_{k}.csv` files, whose name we do not reuse because it means "evaluation" there);
- `train`: the training patients;
- `val`: only when `splits.inner_val_fraction` > 0, an early-stopping part carved from `train`
  (stratified on bin x event, seeded), so that nothing is ever selected on `test` patients.

Folds come from the cohort's `splits_{k}.csv` files when the config names a folder, else from a
stratified k-fold on bin x event over all labelled patients. Either way they are checked: every id
is a labelled patient (unknown ids are an error listing them), no patient is in two parts of a fold,
and the `test` sets of different folds are disjoint.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from healnet.config import Splits
from healnet.io import read_stage_tsv, write_tsv

log = logging.getLogger(__name__)

PARTS = ("train", "val", "test")
MAX_LISTED = 10


def _listing(ids: Sequence[str]) -> str:
    ids = list(ids)
    return ", ".join(ids[:MAX_LISTED]) + (f" (and {len(ids) - MAX_LISTED} more)" if len(ids) > MAX_LISTED else "")


def order_split_files(files: Sequence[str | Path]) -> list[Path]:
    """`splits_{k}.csv` files sorted by k; k must run 0..n-1."""
    numbered = {}
    for f in map(Path, files):
        m = re.fullmatch(r"splits_(\d+)\.csv", f.name)
        if not m:
            raise ValueError(f"split file {f}: name must be splits_<k>.csv (k = fold number from 0)")
        numbered[int(m.group(1))] = f
    if sorted(numbered) != list(range(len(numbered))):
        raise ValueError(
            f"split files {[str(f) for f in files]}: fold numbers {sorted(numbered)} must run 0..{len(numbered) - 1}"
        )
    return [numbered[k] for k in range(len(numbered))]


def read_split_file(path: str | Path, known: pd.Index) -> tuple[list[str], list[str]]:
    """(train, test) ids of one provided `splits_{k}.csv` (columns train, val; val padded with empty cells)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"split file {path} does not exist; check `cohorts.<name>.splits` in the config")
    df = pd.read_csv(path, dtype=str)
    missing = [c for c in ("train", "val") if c not in df.columns]
    if missing:
        raise ValueError(
            f"split file {path}: missing column(s) {missing}; found {list(df.columns)}. Expected columns train, val"
        )
    parts = {}
    for col in ("train", "val"):
        ids = df[col].dropna().str.strip()
        ids = ids[ids != ""]
        unknown = ~ids.isin(known)
        if unknown.any():
            rows = ", ".join(str(i + 2) for i in ids.index[unknown][:MAX_LISTED])
            raise ValueError(
                f"split file {path}: column `{col}` names {int(unknown.sum())} patient(s) not in the cohort's table: "
                f"{_listing(ids[unknown].tolist())} (line(s) {rows}); the split files must belong to this cohort"
            )
        dup = ids[ids.duplicated()]
        if len(dup):
            raise ValueError(f"split file {path}: column `{col}` lists patient(s) twice: {_listing(dup.tolist())}")
        parts[col] = ids.tolist()
    both = sorted(set(parts["train"]) & set(parts["val"]))
    if both:
        raise ValueError(f"split file {path}: patient(s) in both `train` and `val`: {_listing(both)}")
    return parts["train"], parts["val"]


def _strata(labels: pd.DataFrame, ids: Sequence[str]) -> list[np.ndarray]:
    """Stratification labels to try, finest first: bin x event, event, none."""
    sub = labels.loc[list(ids)]
    return [(sub["bin"] * 2 + sub["event"]).to_numpy(), sub["event"].to_numpy(), np.zeros(len(sub), dtype=int)]


def generate_folds(labels: pd.DataFrame, n_folds: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Stratified k-fold over all labelled patients (bin x event; coarser if strata are too small)."""
    from sklearn.model_selection import StratifiedKFold

    ids = labels.index.to_numpy()
    if len(ids) < n_folds:
        raise ValueError(f"{len(ids)} patients cannot make {n_folds} folds; lower splits.n_folds")
    for name, y in zip(("bin x event", "event", "none"), _strata(labels, ids)):  # noqa: B007 (name is logged after the loop)
        counts = np.unique(y, return_counts=True)[1]
        # StratifiedKFold copes with strata smaller than n_folds (they just cannot be in every
        # fold) but needs at least one stratum of n_folds patients.
        if counts.max() >= n_folds:
            break
    if counts.min() < n_folds:
        log.info("%d of %d %s strata have fewer than %d patients", (counts < n_folds).sum(), len(counts), name, n_folds)
    log.info("generating %d folds, stratified on %s, seed %d", n_folds, name, seed)
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" (logged above)
        return [(list(ids[tr]), list(ids[te])) for tr, te in skf.split(ids, y)]


def carve_inner_val(labels: pd.DataFrame, train: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split `fraction` of the training patients off as an early-stopping part, stratified where possible."""
    from sklearn.model_selection import train_test_split

    n_val = int(np.ceil(fraction * len(train)))
    if n_val < 1 or n_val >= len(train):
        raise ValueError(f"splits.inner_val_fraction {fraction} leaves no train or no val patient out of {len(train)}")
    for y in _strata(labels, train):
        _, counts = np.unique(y, return_counts=True)
        if counts.min() >= 2 and n_val >= len(counts) and len(train) - n_val >= len(counts):
            break
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        inner_train, inner_val = train_test_split(
            list(train), test_size=n_val, random_state=seed, stratify=y if len(np.unique(y)) > 1 else None
        )
    return inner_train, inner_val


def check_folds(folds: list[dict[str, list[str]]], known: pd.Index, sources: Sequence[str]) -> None:
    """No patient in two parts of a fold; test sets disjoint across folds; every id known."""
    known_set = set(known)
    seen_test: dict[str, int] = {}
    for k, (fold, source) in enumerate(zip(folds, sources)):
        unknown = sorted(set().union(*fold.values()) - known_set)
        if unknown:
            raise ValueError(f"{source}: {len(unknown)} unknown patient(s): {_listing(unknown)}")
        for i, a in enumerate(PARTS):
            for b in PARTS[i + 1 :]:
                both = sorted(set(fold.get(a, [])) & set(fold.get(b, [])))
                if both:
                    raise ValueError(f"{source}: patient(s) in both `{a}` and `{b}` of fold {k}: {_listing(both)}")
        clash = sorted(c for c in fold["test"] if c in seen_test)
        if clash:
            raise ValueError(
                f"{source}: held-out patient(s) of fold {k} are also held out in fold {seen_test[clash[0]]} "
                f"({sources[seen_test[clash[0]]]}): {_listing(clash)}; evaluation sets must be disjoint"
            )
        seen_test.update((c, k) for c in fold["test"])
    not_tested = sorted(known_set - set(seen_test))
    if not_tested:
        log.warning("%d labelled patient(s) are held out in no fold: %s", len(not_tested), _listing(not_tested))


def make_folds(labels: pd.DataFrame, cfg: Splits, split_files: Sequence[str | Path] = ()) -> list[pd.DataFrame]:
    """All folds as DataFrames (case_id, split), in labels order, checked."""
    if split_files:
        files = order_split_files(split_files)
        pairs = [read_split_file(f, labels.index) for f in files]
        sources = [str(f) for f in files]
    else:
        pairs = generate_folds(labels, cfg.n_folds, cfg.seed)
        sources = [f"generated fold {k}" for k in range(len(pairs))]
    folds = []
    for k, (train, test) in enumerate(pairs):
        fold = {"train": train, "test": test}
        if cfg.inner_val_fraction > 0:
            fold["train"], fold["val"] = carve_inner_val(labels, train, cfg.inner_val_fraction, cfg.seed + k)
        folds.append(fold)
    check_folds(folds, labels.index, sources)
    tables = []
    for k, fold in enumerate(folds):
        part = {c: p for p in PARTS for c in fold.get(p, [])}
        unused = [c for c in labels.index if c not in part]
        if unused:
            log.warning("fold %d: %d labelled patient(s) in no part: %s", k, len(unused), _listing(unused))
        ids = [c for c in labels.index if c in part]
        tables.append(pd.DataFrame({"case_id": ids, "split": [part[c] for c in ids]}))
    return tables


def build_splits(
    labels_path: str | Path,
    outputs: dict[int, str | Path],
    cfg: Splits,
    split_files: Sequence[str | Path] = (),
) -> list[dict]:
    """Stage `splits`: compute and check all folds, write those in `outputs` ({fold: path})."""
    from healnet.survival.labels import load_labels

    labels = load_labels(labels_path)
    tables = make_folds(labels, cfg, split_files)
    summaries = []
    for k, path in outputs.items():
        if not 0 <= k < len(tables):
            raise ValueError(f"fold {k} requested but the cohort has {len(tables)} folds (0..{len(tables) - 1})")
        write_tsv(tables[k], path)
        counts = tables[k]["split"].value_counts().reindex(list(PARTS), fill_value=0).to_dict()
        summaries.append({"fold": k, **counts})
        log.info("fold %d -> %s: %s", k, path, counts)
    return summaries


def load_fold(path: str | Path) -> pd.DataFrame:
    """A fold file indexed by `case_id`, with column `split` in {train, val, test}."""
    df = read_stage_tsv(path, "fold file", "splits", dtype=str)
    if list(df.columns) != ["case_id", "split"]:
        raise ValueError(f"fold file {path}: columns {list(df.columns)}, expected ['case_id', 'split']; regenerate it")
    bad = df.index[~df["split"].isin(PARTS)]
    if len(bad):
        raise ValueError(
            f"fold file {path}: `split` must be one of {list(PARTS)}; line(s) {', '.join(str(i + 2) for i in bad[:10])} "
            f"have {df['split'].iloc[bad[:3]].tolist()}"
        )
    return df.set_index("case_id")


def fold_ids(fold: pd.DataFrame, part: str) -> list[str]:
    """The case_ids of one part (`train`, `val`, `test`) of a fold from `load_fold`."""
    if part not in PARTS:
        raise ValueError(f"unknown split part {part!r}; one of {list(PARTS)}")
    return fold.index[fold["split"] == part].tolist()
