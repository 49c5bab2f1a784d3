"""Omics matrix of a cohort (stage `omics`) and the per-fold transform the training stage applies.

Two steps, so that no statistic of evaluation patients leaks into training:

1. `build_omics` (cohort-wide, no statistics): the table is reduced to one row per patient, the
   omic columns are kept by type (``<GENE>_rnaseq``, ``_cnv``, ``_mut``; with
   `omics.clinical_features` also ``age_clinical`` and ``is_female_clinical``), features constant
   over the whole cohort are dropped, and patients whose omic cells are all empty are left out
   (omics-missing; they are never imputed). Written to ``results/{cohort}/omics.tsv.gz``.
2. `fit_omics_transform(omics_df, train_ids, cfg)` fits on the training patients of one fold only
   and returns an `OmicsTransform`; `.transform(omics_df)` gives one float32 matrix per type.

Per-type treatment (all statistics from the fold's training patients):

- rnaseq: the table's values are roughly z-scored already but carry extreme outliers (max ~14 000
  in BLCA, 36 000 in BRCA, where the median feature has sd ~1). A plain z-score would let one
  outlier inflate a feature's sd and squash everyone else to ~0, so we (a) winsorise each feature at
  its training quantiles `rnaseq_winsor_quantile` / 1 - q, (b) z-score with the mean and sd of the
  winsorised training values, (c) clip to +-`rnaseq_clip`. A median/MAD robust z-score was rejected:
  the MAD is 0 for ~140 genes per cohort (many tied values).
- cnv (GISTIC calls in {-2..2}) and mut (0/1): already small bounded integers, kept unscaled; a
  z-score would blow a rare mutation up to |z| ~ 17.
- clinical (optional): age z-scored, is_female kept as 0/1.
- Missing cells are filled with the training mean (of the winsorised values for rnaseq), then go
  through the same scaling; with `missing_indicator` a 0/1 column `<feature>_missing` is appended
  for every feature that has missing values among the training patients.
- With `drop_train_constant`, features constant among the training patients are dropped, so the
  number of features can differ by fold: size models from `feature_names`.

A type without features (KIRP has no cnv, UCEC no rnaseq) is absent from `transform`'s result.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from healnet.config import Omics
from healnet.io import atomic_path, read_stage_tsv
from healnet.modalities import CLINICAL, OMIC_TYPES
from healnet.omics.tables import omic_type, read_omics_table

log = logging.getLogger(__name__)

TYPE_ORDER = OMIC_TYPES + (CLINICAL,)
UNSCALED = {"is_female_clinical"}  # clinical features kept on their natural scale (0/1)


def build_omics(table_path: str | Path, output: str | Path, cfg: Omics) -> dict:
    """Stage `omics`: write the cohort's per-patient omics matrix; returns counts for the log."""
    table = read_omics_table(table_path, cfg)
    present = table.present()
    patients = table.patients.loc[present.to_numpy()]
    features = [c for t in TYPE_ORDER for c in table.columns.get(t, [])]
    constant = [c for c in features if patients[c].nunique(dropna=True) <= 1]
    if constant:
        log.info("dropping %d feature(s) constant over the cohort: %s", len(constant), constant[:10])
    kept = [c for c in features if c not in set(constant)]
    with atomic_path(output) as tmp:
        # gzip level 1: 3x faster than the default 9 for ~10 % more bytes; mtime 0 for identical reruns.
        patients[kept].reset_index().to_csv(
            tmp, sep="\t", index=False, compression={"method": "gzip", "compresslevel": 1, "mtime": 0}
        )
    counts = {t: sum(omic_type(c) == t for c in kept) for t in TYPE_ORDER if table.columns.get(t)}
    summary = {
        "rows": table.n_rows,
        "patients": len(table.patients),
        "with_omics": int(present.sum()),
        "omics_missing": int((~present).sum()),
        "features": counts,
        "dropped_constant": len(constant),
    }
    log.info("omics %s -> %s: %s", table_path, output, summary)
    return summary


def load_omics(path: str | Path) -> pd.DataFrame:
    """`results/{cohort}/omics.tsv.gz` as a float DataFrame indexed by `case_id`."""
    df = read_stage_tsv(path, "omics matrix", "omics")
    bad = [c for c in df.columns if c != "case_id" and omic_type(c) is None]
    if bad:
        raise ValueError(f"omics matrix {path}: column(s) {bad[:10]} are not `<GENE>_<type>` features; regenerate it")
    features = df.drop(columns="case_id")
    # one float block (not one per source dtype), so callers can add columns without fragmentation
    return pd.DataFrame(
        features.to_numpy(dtype=float), index=pd.Index(df["case_id"], name="case_id"), columns=features.columns
    )


@dataclass
class _Block:
    """Fitted statistics of one feature type (arrays over `columns`)."""

    columns: list[str]
    fill: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    clip: float | None
    indicator: np.ndarray  # positions (into columns) that get a missing-indicator column

    def apply(self, raw: np.ndarray) -> np.ndarray:
        missing = np.isnan(raw)
        x = np.where(missing, self.fill, raw)
        x = np.clip(x, self.lower, self.upper)
        x = (x - self.center) / self.scale
        if self.clip is not None:
            x = np.clip(x, -self.clip, self.clip)
        if len(self.indicator):
            x = np.concatenate([x, missing[:, self.indicator]], axis=1)
        return x.astype(np.float32)

    @property
    def names(self) -> list[str]:
        return self.columns + [f"{self.columns[i]}_missing" for i in self.indicator]


@dataclass
class OmicsTransform:
    """Train-fold statistics; `transform` maps an omics frame to one float32 matrix per type."""

    blocks: dict[str, _Block]
    dropped: dict[str, list[str]] = field(default_factory=dict)
    config: dict | None = None  # the `omics` section it was fitted with (reads a raw table alike)

    @property
    def feature_names(self) -> dict[str, list[str]]:
        return {t: b.names for t, b in self.blocks.items()}

    def transform(self, omics_df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Rows in `omics_df`'s order; keys: the types that have features (rnaseq, cnv, mut, clinical)."""
        out = {}
        for t, block in self.blocks.items():
            absent = [c for c in block.columns if c not in omics_df.columns]
            if absent:
                raise ValueError(
                    f"omics frame lacks {len(absent)} {t} column(s) the transform was fitted on, e.g. {absent[:5]}; "
                    "transform the same omics matrix the transform was fitted on"
                )
            out[t] = block.apply(omics_df[block.columns].to_numpy(dtype=float))
        return out

    def modality(self, arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
        """A model modality: one type (`rnaseq`, ...) or `omics` = all types side by side."""
        types = self._types(name)
        return np.concatenate([arrays[t] for t in types], axis=1)

    def modality_features(self, name: str) -> list[str]:
        """Feature names of `modality(arrays, name)`, in column order."""
        return [n for t in self._types(name) for n in self.feature_names[t]]

    def to_state(self) -> dict:
        """The fitted statistics as a dict of lists and float64/int64 arrays; the checkpoint stores the
        arrays as tensors (`torch.load(weights_only=True)` reads them back), bit for bit."""
        arrays = ("fill", "lower", "upper", "center", "scale")
        blocks = {
            t: {
                "columns": list(b.columns),
                "clip": b.clip,
                "indicator": np.asarray(b.indicator, dtype=np.int64),
                **{a: np.asarray(getattr(b, a), dtype=np.float64) for a in arrays},
            }
            for t, b in self.blocks.items()
        }
        return {"blocks": blocks, "dropped": {t: list(v) for t, v in self.dropped.items()}, "config": self.config}

    @classmethod
    def from_state(cls, state: dict) -> OmicsTransform:
        """The transform `to_state` saved."""

        def array(v, dtype):  # a tensor (on whatever device the checkpoint was mapped to) or a list
            return np.asarray(v.cpu() if hasattr(v, "cpu") else v, dtype=dtype)

        blocks = {
            t: _Block(
                list(b["columns"]),
                *(array(b[a], float) for a in ("fill", "lower", "upper", "center", "scale")),
                b["clip"],
                array(b["indicator"], int),
            )
            for t, b in state["blocks"].items()
        }
        return cls(
            blocks=blocks, dropped={t: list(v) for t, v in state.get("dropped", {}).items()}, config=state.get("config")
        )

    def _types(self, name: str) -> list[str]:
        if name == "omics":  # the omic types; age and sex are the separate `clinical` modality
            return [t for t in self.blocks if t != "clinical"]
        if name not in self.blocks:
            raise ValueError(
                f"omics modality {name!r} has no features in this cohort; available: {['omics', *self.blocks]}"
            )
        return [name]


def fit_omics_transform(omics_df: pd.DataFrame, train_ids: Iterable[str], cfg: Omics) -> OmicsTransform:
    """Fit the per-type statistics on the training patients that have omics (see module docstring)."""
    train_ids = list(train_ids)
    rows = omics_df.index.intersection(pd.Index(train_ids))
    if len(rows) == 0:
        raise ValueError(
            f"none of the {len(train_ids)} training patients has omics (e.g. {train_ids[:3]}); "
            "check that the split and the omics matrix belong to the same cohort"
        )
    train = omics_df.loc[rows]
    blocks: dict[str, _Block] = {}
    dropped: dict[str, list[str]] = {}
    for t in TYPE_ORDER:
        if t == "clinical" and not cfg.clinical_features:
            continue
        columns = [c for c in omics_df.columns if omic_type(c) == t]
        if t == "clinical" and not columns:
            raise ValueError(
                "omics.clinical_features is on but the omics matrix has no *_clinical columns; "
                "rerun the `omics` stage with the same omics config"
            )
        if t != "clinical" and t not in cfg.omic_types:
            continue
        if not columns:
            continue
        x = train[columns].to_numpy(dtype=float)
        block, varies = _fit_block(t, columns, x, cfg)
        if cfg.drop_train_constant and not varies.all():
            # constant (after winsorising) on the training patients: carries nothing for this fold
            dropped[t] = [c for c, v in zip(columns, varies) if not v]
            if not varies.any():
                continue
            block, _ = _fit_block(t, [c for c, v in zip(columns, varies) if v], x[:, varies], cfg)
        blocks[t] = block
    if not blocks:
        raise ValueError("no omic feature is left after dropping features constant on the training patients")
    n_dropped = {t: len(v) for t, v in dropped.items() if v}
    if n_dropped:
        log.info("features constant on the %d training patients, dropped: %s", len(rows), n_dropped)
    return OmicsTransform(blocks=blocks, dropped=dropped, config=cfg.model_dump(mode="json"))


def _fit_block(t: str, columns: list[str], x: np.ndarray, cfg: Omics) -> tuple[_Block, np.ndarray]:
    """Statistics of one type from training values `x` (patients x columns); also which columns vary."""
    n = len(columns)
    missing = np.isnan(x)
    all_missing = missing.all(axis=0)
    lower, upper = np.full(n, -np.inf), np.full(n, np.inf)
    if t == "rnaseq" and cfg.rnaseq_winsor_quantile > 0 and not all_missing.all():
        q = cfg.rnaseq_winsor_quantile
        cols = ~all_missing
        lower[cols] = np.nanquantile(x[:, cols], q, axis=0)
        upper[cols] = np.nanquantile(x[:, cols], 1 - q, axis=0)
    xw = np.clip(x, lower, upper)  # NaN stays NaN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-missing columns: mean 0, sd 1 below
        fill = np.nan_to_num(np.nanmean(xw, axis=0), nan=0.0)
        sd = np.nanstd(xw, axis=0)
        varies = np.nanmax(xw, axis=0) > np.nanmin(xw, axis=0)  # NaN (all missing) compares False
    scaled = np.array([t == "rnaseq" or (t == "clinical" and c not in UNSCALED) for c in columns])
    center = np.where(scaled, fill, 0.0)
    scale = np.where(scaled & varies, sd, 1.0)  # a constant column's sd is 0 up to rounding: keep 1
    clip = cfg.rnaseq_clip if t == "rnaseq" else None
    indicator = np.flatnonzero(missing.any(axis=0)) if cfg.missing_indicator else np.array([], dtype=int)
    return _Block(columns, fill, lower, upper, center, scale, clip, indicator), varies
