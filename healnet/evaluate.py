"""Evaluation of trained models: `cindex.tsv`, `cindex_missing.tsv` and attention inspection.

- `cindex.tsv`: one row per model and fold from each fold's `predictions.tsv` (held-out `test`
  patients): `cindex` (published convention, `healnet.survival.metrics.cindex`), `cindex_td` and
  `ibs` (pycox), `n` patients, `events`, `excluded` (test patients without any of the model's
  modalities, left out); then per model a `mean` and a `std` row (std over folds, ddof 0 as
  numpy / the published code). With `training.seeds` > 1 a fold's metrics are the mean over its
  seeds (`seeds` runs; predictions.tsv has a `seed` column) and `cindex_seed_std` is their spread:
  the `std` row's `cindex` is the fold spread, the `mean` row's `cindex_seed_std` the mean seed
  spread. `cindex_common` scores each model on the fold's test patients that every evaluated model
  scores (`n_common`), so a unimodal and a multimodal model can be compared on the same patients.
- `cindex_missing.tsv`: models with >= 2 modalities re-run on the test patients with (a) only
  modality m for every patient who has it (`<m>_only`, e.g. `wsi_only`, `omics_only`), (b) each
  patient given exactly one of its modalities, chosen uniformly by `evaluation.missing_seed`
  (`one_random`: 50/50 with two modalities; the paper's Table 2 protocol).
- inspection (`inspect/`): for each model that returns attention, its highest- and lowest-risk
  test patients over all folds: patch-attention heatmap over each slide's thumbnail (PNG) and the
  top omic features by attention (TSV); `inspect/index.tsv` lists them.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from healnet.io import write_tsv
from healnet.survival.metrics import cindex, pycox_metrics

log = logging.getLogger(__name__)

METRICS = ["cindex", "cindex_td", "ibs"]
# seeds: training runs averaged in the fold's row; cindex_seed_std: their spread (ddof 0);
# cindex_common / n_common: the c-index on the test patients that every evaluated model scores.
EXTRA = ["seeds", "cindex_seed_std", "cindex_common", "n_common"]
COLUMNS = ["model", "fold", *METRICS, "n", "events", "excluded", *EXTRA]
MISSING_COLUMNS = ["model", "scenario", "fold", *METRICS, "n", "events", "excluded"]


def fold_number(path: str | Path) -> int:
    m = re.search(r"fold(\d+)", Path(path).name)
    if not m:
        raise ValueError(f"fold file {path}: name must contain fold<k> (e.g. fold0.tsv)")
    return int(m.group(1))


def surv_matrix(pred: pd.DataFrame) -> np.ndarray:
    cols = sorted((c for c in pred.columns if c.startswith("surv_")), key=lambda c: int(c.split("_")[1]))
    if not cols:
        raise ValueError("predictions have no surv_<j> columns; regenerate them with `healnet train`")
    return pred[cols].to_numpy(dtype=float)


def metrics_of(pred: pd.DataFrame, edges: Sequence[float], n_grid: int = 100) -> dict:
    """c-index (published convention), pycox time-dependent c-index and IBS, n, events."""
    time, event = pred["time"].to_numpy(float), pred["event"].to_numpy(int)
    row = {"cindex": cindex(time, event, pred["risk"].to_numpy(float)), "cindex_td": math.nan, "ibs": math.nan}
    if len(pred) >= 2 and event.any():
        row["cindex_td"], row["ibs"] = pycox_metrics(surv_matrix(pred), np.asarray(edges), time, event, n_grid)
    row.update(n=len(pred), events=int(event.sum()))
    return row


def first_seed(pred: pd.DataFrame) -> pd.DataFrame:
    """The rows of the first training seed of a predictions.tsv (one row per patient)."""
    return pred[pred["seed"] == pred["seed"].min()] if "seed" in pred.columns else pred


def seed_metrics(pred: pd.DataFrame, edges: Sequence[float], n_grid: int = 100,
                 patients: set[str] | None = None) -> dict:
    """`metrics_of` per training seed of a predictions.tsv, averaged; `cindex_seed_std` their spread.

    `patients`: score only these case_ids (the same-patients comparison)."""
    seeds = sorted(pred["seed"].unique()) if "seed" in pred.columns else [0]
    per_seed = []
    for s in seeds:
        p = pred[pred["seed"] == s] if "seed" in pred.columns else pred
        if patients is not None:
            p = p[p["case_id"].isin(patients)]
        per_seed.append(metrics_of(p, edges, n_grid))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        row = {m: float(np.nanmean([r[m] for r in per_seed])) for m in METRICS}
        row["cindex_seed_std"] = float(np.nanstd([r["cindex"] for r in per_seed]))
    row.update(n=per_seed[0]["n"], events=per_seed[0]["events"], seeds=len(seeds))
    return row


def with_summary(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Append `mean` and `std` rows (over folds, NaN folds ignored) per group of `keys`."""
    out = [rows]
    num = [c for c in (*METRICS, "n", "events", "excluded", *EXTRA) if c in rows.columns]
    for group, df in rows.groupby(keys, sort=False):
        group = group if isinstance(group, tuple) else (group,)
        values = df[num].to_numpy(dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a metric NaN in every fold stays NaN
            stats = {"mean": np.nanmean(values, axis=0), "std": np.nanstd(values, axis=0)}
        for stat, v in stats.items():
            out.append(pd.DataFrame([{**dict(zip(keys, group)), "fold": stat, **dict(zip(num, v))}]))
    table = pd.concat(out, ignore_index=True)
    per_fold = ~table["fold"].isin(["mean", "std"])
    for col in [c for c in ("n", "events", "excluded", "seeds", "n_common") if c in table.columns]:  # counts stay integers in the per-fold rows
        table[col] = pd.Series([int(v) if f and v == v else v for f, v in zip(per_fold, table[col])], dtype=object)
    return table


class Cohort:
    """Lazily loaded fold data of one cohort (shared across models), for re-running models."""

    def __init__(self, fold_files: dict[int, Path], labels, omics, feature_stores, sheet, omics_cfg, labels_cfg, cache_gb: float = 2.0):
        self.fold_files, self.labels, self.omics = fold_files, labels, omics
        self.feature_stores, self.sheet = list(feature_stores or []), sheet
        self.omics_cfg, self.labels_cfg = omics_cfg, labels_cfg
        self.cache_bytes = int(cache_gb * 2**30)
        self._wsi, self._folds = None, {}

    @classmethod
    def from_files(cls, fold_files: Sequence[str | Path], labels, omics, feature_stores, sheet, omics_cfg, labels_cfg,
                   cache_gb: float = 2.0) -> "Cohort":
        """The cohort of the stage files the evaluate and paper rules get (fold numbers from the names)."""
        folds = {fold_number(f): Path(f) for f in fold_files}
        return cls(folds, labels, omics, feature_stores, sheet, omics_cfg, labels_cfg, cache_gb)

    def fold(self, k: int):
        from healnet.training.data import load_fold_data, read_bags

        if k not in self._folds:
            if self._wsi is None and self.feature_stores:
                self._wsi = read_bags(self.feature_stores, self.sheet, self.cache_bytes)
            self._folds = {k: load_fold_data(
                self.labels, self.fold_files[k], self.omics, [], None, self.omics_cfg, self.labels_cfg, wsi=self._wsi,
            )}  # keep one fold in memory at a time
        return self._folds[k]

    def n_test(self, k: int) -> int:
        from healnet.survival.labels import load_labels
        from healnet.survival.splits import fold_ids, load_fold

        ids = set(fold_ids(load_fold(self.fold_files[k]), "test"))
        return len(ids & set(load_labels(self.labels).index))


def scenario_masks(data, idx: np.ndarray, modalities: list[str], seed: int) -> dict[str, tuple[np.ndarray, dict]]:
    """Missing-modality scenarios: name -> (patients, present override for the whole fold)."""
    base = {m: data.present(m).copy() for m in modalities}
    out = {}
    for m in modalities:
        keep = idx[base[m][idx]]
        present = {o: (base[o] if o == m else np.zeros_like(base[o])) for o in modalities}
        out[f"{m}_only"] = (keep, present)
    rng = np.random.default_rng(seed)
    present = {m: np.zeros_like(base[m]) for m in modalities}
    keep = []
    for i in idx:
        have = [m for m in modalities if base[m][i]]
        pick = rng.integers(len(have)) if len(have) > 1 else 0  # draw only when there is a choice
        if have:
            present[have[pick]][i] = True
            keep.append(i)
    out["one_random"] = (np.asarray(keep, dtype=int), present)
    return out


def evaluate_cohort(
    models: Sequence[str],
    models_dir: str | Path,
    cohort: Cohort,
    eval_cfg,
    out_cindex: str | Path,
    out_missing: str | Path,
    inspect_dir: str | Path | None = None,
    device: str = "cpu",
) -> pd.DataFrame:
    """Write cindex.tsv, cindex_missing.tsv and the inspection folder; returns cindex.tsv's table."""
    from healnet.training.loop import load_model, predict

    folds = cohort.fold_files
    rows, missing_rows, preds, edges = [], [], {}, {}
    for model in models:
        for k in sorted(folds):
            run = Path(models_dir) / model / f"fold{k}"
            for name in ("predictions.tsv", "checkpoint.pt"):
                if not (run / name).exists():
                    raise FileNotFoundError(
                        f"{run / name} does not exist: model {model!r} has not been trained on fold {k}; "
                        f"run `healnet train` (rule train) for it or drop it from the cohort's models"
                    )
            pred = pd.read_csv(run / "predictions.tsv", sep="\t", dtype={"case_id": str})
            ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
            row = {"model": model, "fold": str(k), **seed_metrics(pred, ckpt["edges"], eval_cfg.ibs_grid_points)}
            row["excluded"] = cohort.n_test(k) - row["n"]
            if row["excluded"]:
                log.warning("model %s fold %d: %d test patients without any of its modalities %s, left out",
                            model, k, row["excluded"], ckpt["modalities"])
            rows.append(row)
            preds[(model, k)] = first_seed(pred).assign(fold=k)
            edges[(model, k)] = ckpt["edges"]
            log.info("model %s fold %d: c-index %.4f (n %d, events %d, %d seed(s))", model, k, row["cindex"],
                     row["n"], row["events"], row["seeds"])
    for row in rows:  # the same-patients comparison: the test patients every model scores
        k = int(row["fold"])
        common = set.intersection(*(set(p["case_id"]) for (m, f), p in preds.items() if f == k))
        pred = pd.read_csv(Path(models_dir) / row["model"] / f"fold{k}" / "predictions.tsv", sep="\t", dtype={"case_id": str})
        row["cindex_common"] = seed_metrics(pred, edges[(row["model"], k)], eval_cfg.ibs_grid_points, common)["cindex"]
        row["n_common"] = len(common)
    table = with_summary(pd.DataFrame(rows, columns=COLUMNS), ["model"])[COLUMNS]
    write_tsv(table, out_cindex)

    for k in sorted(folds):  # folds outer: each fold's data is loaded once for all models
        for model in models:
            net, ckpt = load_model(Path(models_dir) / model / f"fold{k}" / "checkpoint.pt", device)
            mods = ckpt["modalities"]
            if len(mods) < 2:
                log.info("model %s fold %d uses modalities %s: no missing-modality evaluation", model, k, mods)
                continue
            data = cohort.fold(k)
            idx = data.split_indices("test", mods)
            batch_size = ckpt["training"].get("eval_batch_size", 8)
            for name, (keep, present) in scenario_masks(data, idx, mods, eval_cfg.missing_seed + k).items():
                if len(keep):
                    p = predict(net, data, keep, mods, batch_size, device, present=present)
                    m = metrics_of(p.frame(data, keep), ckpt["edges"], eval_cfg.ibs_grid_points)
                else:
                    m = {"cindex": math.nan, "cindex_td": math.nan, "ibs": math.nan, "n": 0, "events": 0}
                    log.warning("model %s fold %d scenario %s: no test patient has that modality", model, k, name)
                missing_rows.append({"model": model, "scenario": name, "fold": str(k), **m, "excluded": len(idx) - len(keep)})
                log.info("model %s fold %d %s: c-index %.4f (n %d)", model, k, name, m["cindex"], m["n"])
    missing = pd.DataFrame(missing_rows, columns=MISSING_COLUMNS)
    write_tsv(with_summary(missing, ["model", "scenario"])[MISSING_COLUMNS], out_missing)

    if inspect_dir is not None:
        inspect_models(models, models_dir, preds, cohort, eval_cfg, inspect_dir, device)
    return table


def inspect_models(models, models_dir, preds, cohort: Cohort, eval_cfg, out_dir, device: str = "cpu") -> pd.DataFrame:
    """Heatmaps and top omic features of the highest- and lowest-risk test patients per model."""
    from healnet.inspect.attention import mean_over_layers, save_heatmap, top_features
    from healnet.training.data import WSI, make_batch
    from healnet.training.loop import load_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sheet = None
    if cohort.sheet is not None:
        from healnet.sheets import read_sample_sheet

        sheet = read_sample_sheet(cohort.sheet, check_files=False).set_index("slide_id")
    index = []
    for model in models:
        pooled = pd.concat([p for (m, _), p in preds.items() if m == model], ignore_index=True)
        if pooled.empty:
            continue
        _, first = load_model(Path(models_dir) / model / f"fold{int(pooled['fold'].iloc[0])}" / "checkpoint.pt", device)
        mods = first["modalities"]
        full = pooled[pooled["modalities"] == "+".join(mods)]
        pool = full if len(full) else pooled  # prefer patients with every modality
        picks = {"highest_risk": pool.loc[pool["risk"].idxmax()], "lowest_risk": pool.loc[pool["risk"].idxmin()]}
        for rank, row in picks.items():
            k, case = int(row["fold"]), str(row["case_id"])
            net, ckpt = load_model(Path(models_dir) / model / f"fold{k}" / "checkpoint.pt", device)
            if "return_attention" not in inspect.signature(net.forward).parameters:
                log.info("model %s (%s) returns no attention: not inspected", model, ckpt["architecture"])
                break
            data = cohort.fold(k)
            batch = make_batch(data, [data.index[case]], mods, device=device)
            with torch.no_grad():
                _, attn = net(batch, return_attention=True)
            stem = f"{model}_{rank}_{case}"
            for m in mods:
                if not bool(batch["present"][m][0]):
                    continue
                scores = mean_over_layers(attn[m])[0]
                if m == WSI:
                    start = 0
                    for bag in data.wsi.slide_bags(case):
                        s = scores[start : start + len(bag.features)]
                        start += len(bag.features)
                        path = sheet.loc[bag.slide_id, "path"] if sheet is not None and bag.slide_id in sheet.index else None
                        png = out_dir / f"{stem}_{bag.slide_id}.png"
                        save_heatmap(png, bag.coords, s, bag.patch_size_level0 or 224, path,
                                     f"{model} {rank.replace('_', ' ')} {case} (risk {row['risk']:.3f}), {bag.slide_id}",
                                     eval_cfg.inspect_thumbnail_px)
                        index.append({"model": model, "rank": rank, "case_id": case, "fold": k, "risk": row["risk"],
                                      "modality": m, "file": png.name})
                else:
                    names = ckpt["feature_names"].get(m) or [f"{m}_{i}" for i in range(len(scores))]
                    if len(names) != len(scores):  # tokens are groups of features (omics_tokens), not features
                        log.info("model %s: %d %s tokens for %d features: no per-feature ranking", model,
                                 len(scores), m, len(names))
                        continue
                    values = batch[m][0].cpu().numpy()
                    tsv = out_dir / f"{stem}_{m}_top{eval_cfg.inspect_top_features}.tsv"
                    write_tsv(top_features(scores, names, values, eval_cfg.inspect_top_features), tsv)
                    index.append({"model": model, "rank": rank, "case_id": case, "fold": k, "risk": row["risk"],
                                  "modality": m, "file": tsv.name})
    table = pd.DataFrame(index, columns=["model", "rank", "case_id", "fold", "risk", "modality", "file"])
    write_tsv(table, out_dir / "index.tsv")
    return table
