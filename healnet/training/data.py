"""Patient-level data for one fold: labels, omics (per-fold transform), WSI bags, missingness.

A patient is one row: survival label, one vector per tabular modality, and a bag of patch features
(all slides of the patient concatenated). Missing is explicit: `present[m]` is False and nothing is
filled in for that modality. Batches follow the model contract in `healnet.models`: WSI bags padded
to the longest bag of the batch with a key-padding mask; tabular (B, F); `present[m]` (B,).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from healnet.modalities import CLINICAL, OMICS, WSI

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class SlideBag:
    """The patches of one slide: features (N, D) float32, level-0 top-left coords (N, 2)."""

    slide_id: str
    features: np.ndarray
    coords: np.ndarray
    patch_size_level0: int | None = None


class WsiBags:
    """Patch-feature bags per patient, held in memory or read from the feature stores on demand."""

    def __init__(
        self,
        slides: dict[str, list[str]],
        feature_dim: int,
        loader: Callable[[str], SlideBag],
        encoder: dict | None = None,
    ):
        self.slides = {case: ids for case, ids in slides.items() if ids}  # cases with >= 1 patch
        self.feature_dim = feature_dim
        self.encoder = encoder  # {"encoder": name, "weights": ...} of the stores (None: in-memory bags)
        self._loader = loader

    @classmethod
    def from_arrays(cls, bags: dict[str, list[SlideBag]]) -> WsiBags:
        """In-memory bags (tests, small cohorts)."""
        by_id = {b.slide_id: b for slides in bags.values() for b in slides}
        dims = {b.features.shape[1] for b in by_id.values()}
        if len(dims) > 1:
            raise ValueError(f"WSI bags have different feature sizes {sorted(dims)}; use one encoder per cohort")
        slides = {case: [b.slide_id for b in v if len(b.features)] for case, v in bags.items()}
        return cls(slides, dims.pop() if dims else 0, by_id.__getitem__)

    @classmethod
    def from_stores(cls, paths: Iterable[str | Path], sheet: pd.DataFrame, cache_bytes: int = 2 << 30) -> WsiBags:
        """Feature stores (`healnet.wsi.store`) mapped to patients through the sample sheet.

        Failed and no-tissue slides (N = 0) are left out, so a patient none of whose slides has
        patches is WSI-missing. The features stay in memory while their total is under `cache_bytes`.
        """
        from healnet.wsi.store import OK, read_feature_store

        case_of = dict(zip(sheet["slide_id"].astype(str), sheet["case_id"].astype(str)))
        slides: dict[str, list[str]] = {}
        path_of: dict[str, Path] = {}
        cache: dict[str, SlideBag] = {}
        total, dims, skipped, encoders = 0, set(), [], {}
        for path in paths:
            store = read_feature_store(path)
            slide_id = str(store.attrs.get("slide_id") or Path(path).name.removesuffix(".zarr"))
            if slide_id not in case_of:
                raise ValueError(
                    f"feature store {path}: slide {slide_id!r} is not in the sample sheet; "
                    "the stores and the sheet must come from the same cohort"
                )
            n = len(store.features)
            if n == 0 or store.attrs.get("status", OK) != OK:
                skipped.append(f"{slide_id} ({store.attrs.get('status')}: {store.attrs.get('reason', '')})")
                continue
            dims.add(int(store.features.shape[1]))
            encoders.setdefault(
                store.attrs.get("encoder"),
                {"encoder": store.attrs.get("encoder"), "weights": store.attrs.get("weights")},
            )
            slides.setdefault(case_of[slide_id], []).append(slide_id)
            path_of[slide_id] = Path(path)
            total += store.features.nbytes
            if total <= cache_bytes:
                cache[slide_id] = _bag_of(store, slide_id)
        if len(dims) > 1:
            raise ValueError(f"feature stores have different feature sizes {sorted(dims)}; use one encoder per cohort")
        if len(encoders) > 1:
            raise ValueError(
                f"feature stores come from different encoders {sorted(map(str, encoders))}; use one encoder per cohort"
            )
        if skipped:
            log.info("%d slides without patches (left out): %s", len(skipped), ", ".join(skipped))
        if total > cache_bytes:
            log.info("features total %.1f GiB > cache limit: reading bags from disk each time", total / 2**30)
            cache = {}

        def load(slide_id: str) -> SlideBag:
            if slide_id in cache:
                return cache[slide_id]
            return _bag_of(read_feature_store(path_of[slide_id]), slide_id)

        return cls(slides, dims.pop() if dims else 0, load, next(iter(encoders.values()), None))

    def has(self, case: str) -> bool:
        return case in self.slides

    def slide_bags(self, case: str) -> list[SlideBag]:
        return [self._loader(s) for s in self.slides.get(case, [])]

    def bag(self, case: str) -> np.ndarray:
        """All patches of a patient, slides concatenated: (N, D) float32."""
        return np.concatenate([b.features for b in self.slide_bags(case)], axis=0)


def _bag_of(store, slide_id: str) -> SlideBag:
    return SlideBag(
        slide_id,
        np.asarray(store.features, dtype=np.float32),
        np.asarray(store.coords, dtype=np.int64),
        level0_patch_size(store.attrs),
    )


def level0_patch_size(attrs: dict) -> int | None:
    """Level-0 px one patch covers: the store's `patch_size_level0`, else derived from its
    `patch_size` at `target_mpp` on a slide of `mpp` (healnet.wsi.patches); None when unrecorded."""
    if attrs.get("patch_size_level0") is not None:
        return int(attrs["patch_size_level0"])
    if all(attrs.get(k) for k in ("patch_size", "target_mpp", "mpp")):
        return int(round(attrs["patch_size"] * attrs["target_mpp"] / attrs["mpp"]))
    return None


@dataclass
class FoldData:
    """One fold of a cohort: every labelled patient of the fold file, with all modalities."""

    case_ids: list[str]
    time: np.ndarray  # survival months
    event: np.ndarray  # 1 = event observed
    bins: np.ndarray  # discrete-time label in [0, n_bins)
    edges: np.ndarray  # n_bins + 1 bin edges (months)
    tabular: dict[str, np.ndarray]  # modality -> (n, F) float32, rows of absent patients are 0
    tabular_present: dict[str, np.ndarray]  # modality -> (n,) bool
    feature_names: dict[str, list[str]]
    wsi: WsiBags | None
    split_of: np.ndarray  # (n,) str: train / val / test
    transform: Any = None  # the fitted OmicsTransform of the tabular modalities (None: no omics)
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {c: i for i, c in enumerate(self.case_ids)}
        self.censorship = 1 - self.event

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    def available(self, modalities: Sequence[str]) -> list[str]:
        """The requested modalities that any patient of the cohort has."""
        out = []
        for m in modalities:
            if m == WSI:
                ok = self.wsi is not None and bool(self.wsi.slides)
            else:
                ok = m in self.tabular and bool(self.tabular_present[m].any())
            if ok:
                out.append(m)
            else:
                log.warning("modality %r: no patient of this cohort has it; the model runs without it", m)
        return out

    def present(self, m: str) -> np.ndarray:
        if m == WSI:
            if self.wsi is None:
                return np.zeros(len(self.case_ids), dtype=bool)
            return np.array([self.wsi.has(c) for c in self.case_ids])
        if m not in self.tabular_present:
            return np.zeros(len(self.case_ids), dtype=bool)
        return self.tabular_present[m]

    def input_dims(self, modalities: Sequence[str]) -> dict[str, int]:
        return {m: (self.wsi.feature_dim if m == WSI else self.tabular[m].shape[1]) for m in modalities}

    def split_indices(self, split: str, modalities: Sequence[str]) -> np.ndarray:
        """Patients of a split that have at least one of the modalities (others are logged and left out)."""
        idx = np.flatnonzero(self.split_of == split)
        has_any = np.zeros(len(idx), dtype=bool)
        for m in modalities:
            has_any |= self.present(m)[idx]
        if (~has_any).any():
            # Expected wherever a modality is missing for some patients (a slide-only model cannot
            # score a patient without slides); cindex.tsv counts them (`excluded`), so INFO, not WARNING.
            log.info(
                "%s split: %d of %d patients have none of the modalities %s and are left out",
                split,
                int((~has_any).sum()),
                len(idx),
                list(modalities),
            )
        return idx[has_any]


def make_batch(
    data: FoldData,
    indices: Sequence[int],
    modalities: Sequence[str],
    max_patches: int | None = None,
    rng: np.random.Generator | None = None,
    present: dict[str, np.ndarray] | None = None,
    device: torch.device | str = "cpu",
) -> dict:
    """The model batch for `indices` (see `healnet.models`), plus `bins`, `censorship`, `time`, `event`.

    `max_patches` caps each bag by a random subset drawn from `rng` (training); `present` overrides
    the modality-present masks of the whole fold (missing-modality evaluation).
    """
    idx = np.asarray(indices, dtype=int)
    b = len(idx)
    batch: dict = {"present": {}}
    for m in modalities:
        pres = (present[m] if present is not None and m in present else data.present(m))[idx]
        batch["present"][m] = torch.as_tensor(pres, dtype=torch.bool, device=device)
        if m == WSI:
            bags = []
            for i, p in zip(idx, pres):
                if not p:
                    bags.append(None)
                    continue
                bag = data.wsi.bag(data.case_ids[i])
                if max_patches is not None and len(bag) > max_patches:
                    gen = rng if rng is not None else np.random.default_rng(0)
                    bag = bag[np.sort(gen.choice(len(bag), max_patches, replace=False))]
                bags.append(bag)
            n_max = max([len(x) for x in bags if x is not None], default=1)
            feats = np.zeros((b, n_max, data.wsi.feature_dim), dtype=np.float32)
            mask = np.zeros((b, n_max), dtype=bool)
            for j, bag in enumerate(bags):
                if bag is not None:
                    feats[j, : len(bag)] = bag
                    mask[j, : len(bag)] = True
            batch[m] = torch.from_numpy(feats).to(device)
            batch[f"{m}_mask"] = torch.from_numpy(mask).to(device)
        else:
            batch[m] = torch.from_numpy(data.tabular[m][idx]).to(device)
    batch["bins"] = torch.as_tensor(data.bins[idx], dtype=torch.long, device=device)
    batch["censorship"] = torch.as_tensor(data.censorship[idx], dtype=torch.float32, device=device)
    batch["time"] = data.time[idx]
    batch["event"] = data.event[idx]
    return batch


def wsi_feature_mean(data: FoldData, indices: np.ndarray) -> np.ndarray | None:
    """Mean patch feature (D,) over every patch of the patients `indices` that have slides; None when
    none has. One pass over their bags, accumulated in float64."""
    if data.wsi is None:
        return None
    total, count = np.zeros(data.wsi.feature_dim, np.float64), 0
    for i in indices:
        case = data.case_ids[i]
        if data.wsi.has(case):
            for bag in data.wsi.slide_bags(case):
                total += bag.features.sum(axis=0, dtype=np.float64)
                count += len(bag.features)
    return (total / count).astype(np.float32) if count else None


def balanced_order(data: FoldData, indices: np.ndarray, gen: torch.Generator) -> np.ndarray:
    """Class-balanced resampling on (bin, censorship): weight N / count(label), with replacement."""
    label = 2 * data.bins[indices] + data.censorship[indices]
    _, inverse, counts = np.unique(label, return_inverse=True, return_counts=True)
    weights = torch.as_tensor(len(indices) / counts[inverse], dtype=torch.double)
    draw = torch.multinomial(weights, len(indices), replacement=True, generator=gen)
    return indices[draw.numpy()]


# ---------------------------------------------------------------------------------------------
# Loading a fold from the pipeline's files (shared contracts of the omics and WSI stages)


def load_fold_data(
    labels_path: str | Path,
    fold_path: str | Path,
    omics_path: str | Path | None,
    feature_stores: Sequence[str | Path],
    sheet_path: str | Path | None,
    omics_cfg,
    labels_cfg,
    cache_bytes: int = 2 << 30,
    wsi: WsiBags | None = None,
) -> FoldData:
    """Training data of one fold: labels, bin edges and the omics transform fitted on this fold's
    train patients (`FoldData.edges`, `.transform`, carried into the checkpoint), and the bags.

    `wsi`: bags already read (they do not depend on the fold), else read from `feature_stores`.
    """
    from healnet.survival.labels import bins_for_fold

    labels, df = read_fold_labels(labels_path, fold_path)
    train_ids = df.loc[df["split"] == "train", "case_id"]
    bins, edges = bins_for_fold(labels, train_ids, labels_cfg)
    omics, transform = None, None
    if omics_path is not None:
        omics = read_omics(omics_path)
        transform = fit_fold_transform(omics, set(train_ids), omics_cfg, omics_path)
    if wsi is None and feature_stores:
        wsi = read_bags(feature_stores, sheet_path, cache_bytes)
    return fold_data(df, edges, bins.loc[df["case_id"]].to_numpy(dtype=int), omics, transform, wsi, omics_path)


def read_fold_labels(labels_path: str | Path, fold_path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(labels.tsv indexed by case_id, the fold's labelled patients: case_id, split and their labels)."""
    from healnet.survival.labels import load_labels
    from healnet.survival.splits import load_fold

    labels = load_labels(labels_path)
    fold = load_fold(fold_path).reset_index()
    unknown = sorted(set(fold["case_id"]) - set(labels.index))
    if unknown:
        log.warning(
            "%s: %d patients have no survival label and are left out (e.g. %s)", fold_path, len(unknown), unknown[:3]
        )
    df = fold.merge(labels.reset_index(), on="case_id", how="inner")
    if df.empty:
        raise ValueError(
            f"{fold_path}: no patient of this fold has a label in {labels_path}; check both come from one cohort"
        )
    return labels, df


def fold_data(
    df: pd.DataFrame,
    edges: np.ndarray,
    bins: np.ndarray,
    omics: pd.DataFrame | None,
    transform,
    wsi: WsiBags | None,
    source: str | Path | None = "omics",
) -> FoldData:
    """FoldData of the patients of `df` (case_id, split, survival_months, event), omics through a
    fitted `transform` (no statistics of these patients are computed here)."""
    case_ids = df["case_id"].tolist()
    tabular, present, names = {}, {}, {}
    if transform is not None:
        tabular, present, names = tabular_arrays(transform, omics, case_ids, source)
    return FoldData(
        case_ids=case_ids,
        time=df["survival_months"].to_numpy(dtype=float),
        event=df["event"].to_numpy(dtype=int),
        bins=np.asarray(bins, dtype=int),
        edges=np.asarray(edges, dtype=float),
        tabular=tabular,
        tabular_present=present,
        feature_names=names,
        wsi=wsi,
        split_of=df["split"].to_numpy(dtype=str),
        transform=transform,
    )


def read_bags(
    feature_stores: Sequence[str | Path], sheet_path: str | Path | None, cache_bytes: int = 2 << 30
) -> WsiBags:
    """The cohort's WSI bags from its feature stores and sample sheet."""
    if sheet_path is None:
        raise ValueError("feature stores given without a sample sheet; pass --sheet to map slides to patients")
    from healnet.sheets import read_sample_sheet

    return WsiBags.from_stores(feature_stores, read_sample_sheet(sheet_path, check_files=False), cache_bytes)


def read_omics(omics_path: str | Path) -> pd.DataFrame:
    """The omics matrix (`healnet.omics.preprocess.load_omics`) indexed by str case_id."""
    from healnet.omics.preprocess import load_omics

    omics = load_omics(omics_path)
    omics.index = omics.index.astype(str)
    return omics


def fit_fold_transform(omics: pd.DataFrame, train_ids: set[str], omics_cfg, omics_path: str | Path | None = None):
    """The omics transform fitted on the fold's training patients that have omics."""
    from healnet.omics.preprocess import fit_omics_transform

    fit_ids = [c for c in omics.index if c in train_ids]
    if not fit_ids:
        raise ValueError(f"{omics_path}: no training patient of this fold has omics; cannot fit the omics transform")
    return fit_omics_transform(omics, fit_ids, omics_cfg)


def tabular_arrays(transform, omics: pd.DataFrame, case_ids: list[str], source: str | Path | None = "omics"):
    """(tabular, present, names) of `case_ids`: one modality per omic type plus `omics`, through the
    fitted `transform`. A type is missing for a patient whose raw values of that type are all empty."""
    from healnet.omics.tables import omic_type

    arrays = transform.transform(omics)
    row_of = {c: i for i, c in enumerate(omics.index)}
    rows = np.array([row_of.get(c, -1) for c in case_ids])
    has_row = rows >= 0
    tabular, present, names = {}, {}, {}
    for kind, values in arrays.items():
        cols = [c for c in omics.columns if omic_type(c) == kind]
        # A type is missing for a patient whose raw values of that type are all empty.
        raw_ok = omics[cols].notna().any(axis=1).to_numpy() if cols else np.ones(len(omics), dtype=bool)
        pres = has_row & raw_ok[np.where(has_row, rows, 0)]
        x = np.zeros((len(case_ids), values.shape[1]), dtype=np.float32)
        x[has_row] = np.asarray(values, dtype=np.float32)[rows[has_row]]
        x[~pres] = 0.0  # never read: absent samples are skipped by the model
        n_nan = int(np.isnan(x).sum())
        if n_nan:
            log.warning("%s: %d empty %s values of present patients set to 0 after the transform", source, n_nan, kind)
            x = np.nan_to_num(x, nan=0.0)
        tabular[kind], present[kind] = x, pres
        names[kind] = list(transform.feature_names[kind])
    kinds = [k for k in arrays if k != CLINICAL]  # age and sex are their own modality, never `omics`
    if kinds:
        tabular[OMICS] = np.concatenate([tabular[k] for k in kinds], axis=1)
        present[OMICS] = np.any([present[k] for k in kinds], axis=0)
        names[OMICS] = [n for k in kinds for n in names[k]]
    else:
        present[OMICS] = np.zeros(len(case_ids), dtype=bool)
    n_missing = int((~present[OMICS]).sum())
    if n_missing:
        log.info("%d of %d patients have no omics (omics-missing)", n_missing, len(case_ids))
    return tabular, present, names
