"""Nested selection of a model recipe on one fold's training patients only.

`inner_fold` copies a fold without its `test` patients (their rows are dropped, so no label,
feature or count of theirs can reach the selection) and splits its training patients into an inner
train and an inner `val` part (stratified on bin x event, `healnet.survival.splits.carve_inner_val`).
`select_recipe` trains every candidate recipe on the inner train part for its full epoch budget,
records the inner-val c-index after every epoch, averages the curves over `repeats` inner splits,
and returns, per candidate, the epoch where the (3-epoch moving average) curve peaks and its value.
The winner and its epoch count are then trained on the whole training part of the fold and scored
on `test` once (bench/omics_models.py). tests/test_cox.py poisons the test labels and
checks that nothing chosen changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from healnet.training.data import FoldData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """One candidate: architecture, modalities, model keyword arguments and the `training` section."""

    architecture: str
    modalities: tuple[str, ...]
    params: Mapping
    training: object  # healnet.config.Training


def subset(data: FoldData, rows: np.ndarray, split_of: np.ndarray) -> FoldData:
    """The patients `rows` of a fold, with new split labels (same bins, edges, transform)."""
    return FoldData(
        case_ids=[data.case_ids[i] for i in rows],
        time=data.time[rows],
        event=data.event[rows],
        bins=data.bins[rows],
        edges=data.edges,
        tabular={m: v[rows] for m, v in data.tabular.items()},
        tabular_present={m: v[rows] for m, v in data.tabular_present.items()},
        feature_names=data.feature_names,
        wsi=data.wsi,
        split_of=np.asarray(split_of, dtype=str),
        transform=data.transform,
    )


def inner_fold(data: FoldData, fraction: float, seed: int) -> FoldData:
    """The fold's training patients (train + any val) only, split into inner train / val."""
    from healnet.survival.splits import carve_inner_val

    rows = np.flatnonzero(np.isin(data.split_of, ["train", "val"]))
    ids = [data.case_ids[i] for i in rows]
    labels = pd.DataFrame({"bin": data.bins[rows], "event": data.event[rows]}, index=ids)
    _, val = carve_inner_val(labels, ids, fraction, seed)
    split = np.where(np.isin(ids, val), "val", "train")
    return subset(data, rows, split)


def smooth(curve: np.ndarray, window: int = 3) -> np.ndarray:
    """Centred moving average (shorter at the ends), so one lucky epoch does not win."""
    out = np.empty_like(curve)
    half = window // 2
    for i in range(len(curve)):
        out[i] = np.nanmean(curve[max(0, i - half) : i + half + 1])
    return out


def select_recipe(
    data: FoldData,
    candidates: Mapping[str, Recipe],
    fold: int,
    seed: int,
    fraction: float = 0.25,
    repeats: int = 2,
    device: str = "cpu",
) -> pd.DataFrame:
    """One row per candidate: `score` (peak of the mean inner-val c-index curve), `epochs` (its epoch),
    `chosen` (True for the best score). Only the fold's training patients are read."""
    from healnet.training.loop import fit_model

    rows = []
    for name, recipe in candidates.items():
        curves = []
        for r in range(repeats):
            inner = inner_fold(data, fraction, seed + r)
            mods = inner.available(recipe.modalities)
            cfg = replace_training(recipe.training, early_stopping_patience=None)
            _, train_log, _ = fit_model(
                inner, recipe.architecture, mods, dict(recipe.params), cfg, fold, seed + r, f"select:{name}", device
            )
            curves.append(train_log["val_cindex"].to_numpy(dtype=float))
        curve = smooth(np.nanmean(np.vstack(curves), axis=0))
        best = int(np.nanargmax(curve))
        rows.append(
            {
                "candidate": name,
                "score": float(curve[best]),
                "epochs": best + 1,
                "curve": " ".join(f"{v:.3f}" for v in curve),
            }
        )
        log.info("fold %d candidate %s: inner-val c-index %.3f at epoch %d", fold, name, curve[best], best + 1)
    table = pd.DataFrame(rows)
    table["chosen"] = table["score"] == table["score"].max()
    if table["chosen"].sum() > 1:  # ties: the first listed candidate
        table["chosen"] = np.arange(len(table)) == int(table["score"].to_numpy().argmax())
    return table


def replace_training(training, **changes):
    """The `training` section with some keys changed (validated)."""
    from healnet.config import with_keys

    return with_keys(training, changes)


def final_recipe(recipe: Recipe, epochs: int) -> Recipe:
    """The chosen recipe with the epoch count the inner validation found."""
    return replace(recipe, training=replace_training(recipe.training, epochs=epochs, early_stopping_patience=None))
