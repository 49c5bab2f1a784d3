"""Training of one model on one fold; model-agnostic (only the registry contract). Scoring a
trained run (`predict`, `load_model`, `load_run`) is `healnet.inference`.

Protocol: a fixed epoch budget, evaluation on the fold's held-out `test` patients. Early stopping,
when configured, watches only the inner `val` split carved from training data, and restores a deep
copy of the best weights. Gradient accumulation is real: the loss of a group of micro-batches is
summed per sample and divided by the group's sample count, so the step equals one large batch.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from healnet import __version__
from healnet.inference import attach_wsi_center, predict
from healnet.io import atomic_path, write_tsv
from healnet.models import build_model
from healnet.survival.loss import l1_penalty, nll_loss
from healnet.survival.metrics import cindex, risk_from_survival, survival_from_logits
from healnet.training.data import WSI, FoldData, balanced_order, make_batch, wsi_feature_mean

log = logging.getLogger(__name__)


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed Python, NumPy and torch; deterministic kernels (warn where none exists)."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is visible; set it to 'auto' or 'cpu'")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_epoch(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    data: FoldData,
    order: np.ndarray,
    modalities: Sequence[str],
    cfg,
    rng: np.random.Generator,
    device: torch.device,
    desc: str = "",
) -> tuple[float, float]:
    """One pass over `order`; returns (mean training loss, c-index of the training outputs)."""
    model.train()
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    total_loss, risks = 0.0, {}
    bar = tqdm(total=len(order), desc=desc, leave=False, disable=None, unit="patient")
    for g in range(0, len(batches), cfg.grad_accumulation):
        group = batches[g : g + cfg.grad_accumulation]
        n_group = sum(len(b) for b in group)
        opt.zero_grad(set_to_none=True)
        for idx in group:
            batch = make_batch(data, idx, modalities, cfg.max_patches, rng, device=device)
            logits = model(batch)
            loss = nll_loss(logits, batch["bins"], batch["censorship"], cfg.alpha, reduction="sum")
            (loss / n_group).backward()
            total_loss += loss.item()
            risk = risk_from_survival(survival_from_logits(logits.detach()))
            risks.update(zip(idx.tolist(), risk.tolist()))
            bar.update(len(idx))
        if cfg.l1 > 0:
            (cfg.l1 * l1_penalty(model)).backward()
        opt.step()
    bar.close()
    seen = np.array(sorted(risks))
    c = cindex(data.time[seen], data.event[seen], np.array([risks[i] for i in seen])) if len(seen) else math.nan
    return total_loss / max(len(order), 1), c


def train_fold(
    data: FoldData,
    architecture: str,
    modalities: Sequence[str],
    params: dict,
    cfg,
    fold: int,
    out_dir: str | Path,
    model_name: str = "model",
    threads: int | None = None,
) -> pd.DataFrame:
    """Train one model on one fold, `cfg.seeds` times; write the run (`healnet.runs`): checkpoint.pt,
    run.json, predictions.tsv, train_log.tsv.

    `cfg` is the `training` section. Seed s of fold k is `cfg.seed + k + SEED_STRIDE * s`, so seed 0 is
    the single-seed run. predictions.tsv and train_log.tsv hold every seed's rows (`seed` column);
    checkpoint.pt is seed 0's model (what missing-modality evaluation and inspection re-run). A
    closed-form model (`closed_form`, e.g. coxnet) is deterministic and fitted once.
    Returns the test predictions.
    """
    device = resolve_device(cfg.device)
    if threads:
        torch.set_num_threads(threads)
    mods = usable_modalities(data, modalities, model_name)
    n_seeds = 1 if getattr(model_class(architecture), "closed_form", False) else cfg.seeds
    frames, logs, checkpoint = [], [], None
    for s in range(n_seeds):
        model, train_log, epoch = fit_model(
            data,
            architecture,
            mods,
            params,
            cfg,
            fold,
            cfg.seed + fold + SEED_STRIDE * s,
            model_name,
            device,
        )
        frames.append(held_out_predictions(model, data, mods, cfg, device, fold, s))
        logs.append(train_log.assign(seed=s))
        if s == 0:
            checkpoint = run_checkpoint(model, data, architecture, mods, params, cfg, fold, epoch, n_seeds, model_name)
    frame = pd.concat(frames, ignore_index=True)
    write_run(out_dir, checkpoint, frame, pd.concat(logs, ignore_index=True))
    return frame


def usable_modalities(data: FoldData, modalities: Sequence[str], model_name: str) -> list[str]:
    """The model's modalities that some patient has; an error when none."""
    mods = data.available(modalities)
    if not mods:
        raise ValueError(
            f"model {model_name!r}: no patient of this cohort has any of its modalities {list(modalities)}; "
            "remove the model from the cohort's `models` or provide the data"
        )
    return mods


def held_out_predictions(
    model: torch.nn.Module, data: FoldData, mods: Sequence[str], cfg, device, fold: int, seed_index: int
) -> pd.DataFrame:
    """predictions.tsv rows of one seed: the fold's test patients."""
    test_idx = data.split_indices("test", mods)
    pred = predict(model, data, test_idx, mods, cfg.eval_batch_size, device, alpha=cfg.alpha)
    frame = pred.frame(data, test_idx)
    frame.insert(1, "seed", seed_index)
    c_test = cindex(frame["time"], frame["event"], frame["risk"])
    log.info("fold %d seed %d: test c-index %.4f on %d patients", fold, seed_index, c_test, len(frame))
    return frame


def run_checkpoint(
    model: torch.nn.Module,
    data: FoldData,
    architecture: str,
    mods: Sequence[str],
    params: dict,
    cfg,
    fold: int,
    epoch: int,
    n_seeds: int,
    model_name: str,
) -> dict:
    """Everything a run needs to score new patients (`healnet.inference.load_run`): the weights (with the
    WSI centre buffer) and what was fitted on the fold's training patients (omics transform, bin edges)."""
    tabular = [m for m in mods if m != WSI]
    return {
        "model": model_name,
        "architecture": architecture,
        "modalities": list(mods),
        "params": dict(params),
        "input_dims": data.input_dims(mods),
        "n_bins": data.n_bins,
        "edges": [float(e) for e in data.edges],
        "feature_names": {m: data.feature_names.get(m, []) for m in mods if m in data.feature_names},
        "omics_transform": _as_tensors(data.transform.to_state()) if tabular and data.transform is not None else None,
        "omics": data.transform.config if tabular and data.transform is not None else None,
        "encoder": data.wsi.encoder if WSI in mods and data.wsi is not None else None,
        "fold": fold,
        "epoch": int(epoch),
        "seeds": n_seeds,
        "training": cfg.model_dump(),
        "version": __version__,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def _as_tensors(state):
    """Arrays in a nested dict as tensors: `torch.load(weights_only=True)` reads tensors, not arrays."""
    if isinstance(state, dict):
        return {k: _as_tensors(v) for k, v in state.items()}
    return torch.as_tensor(state) if isinstance(state, np.ndarray) else state


def write_run(out_dir: str | Path, checkpoint: dict, predictions: pd.DataFrame, train_log: pd.DataFrame) -> None:
    """The run folder: checkpoint.pt, run.json (its metadata), train_log.tsv, predictions.tsv."""
    from healnet.runs import CHECKPOINT, PREDICTIONS, TRAIN_LOG, write_info

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / CHECKPOINT) as tmp:
        torch.save(checkpoint, tmp)
    write_info({k: v for k, v in checkpoint.items() if k not in ("state_dict", "omics_transform")}, out)
    write_tsv(train_log, out / TRAIN_LOG)
    write_tsv(predictions, out / PREDICTIONS)


SEED_STRIDE = 1000  # seed s of fold k: training.seed + k + 1000 s (s = 0 is the single-seed run)


def model_class(architecture: str) -> type:
    from healnet.models import REGISTRY, _import_all

    _import_all()
    if architecture not in REGISTRY:
        raise ValueError(f"unknown model architecture {architecture!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[architecture]


def fit_model(
    data: FoldData,
    architecture: str,
    mods: Sequence[str],
    params: dict,
    cfg,
    fold: int,
    seed: int,
    model_name: str = "model",
    device: torch.device | str = "cpu",
) -> tuple[torch.nn.Module, pd.DataFrame, int]:
    """Build and train one model on the fold's `train` patients (early stopping on `val` only).

    Returns (model, training log with one row per epoch, the epoch whose weights the model holds).
    The `test` patients are never read here.
    """
    device = torch.device(device)
    seed_everything(seed, device)
    train_idx = data.split_indices("train", mods)
    val_idx = data.split_indices("val", mods)
    if len(train_idx) == 0:
        raise ValueError(f"fold {fold}: no training patient has any of the modalities {list(mods)}")
    names = {m: data.feature_names.get(m, []) for m in mods if m in data.feature_names}
    model = build_model(architecture, data.input_dims(mods), data.n_bins, params, names)
    if getattr(model, "closed_form", False):
        return fit_closed_form(model, data, train_idx, val_idx, mods, seed, model_name, fold)
    stopper = EarlyStopping.of(cfg, len(val_idx), fold)
    if cfg.center_wsi_features and WSI in mods:
        center = wsi_feature_mean(data, train_idx)
        if center is not None:
            attach_wsi_center(model, center)
    model = model.to(device)
    log.info(
        "model %s (%s, %d parameters), fold %d, seed %d: %d train / %d val patients, modalities %s, device %s",
        model_name,
        architecture,
        sum(p.numel() for p in model.parameters()),
        fold,
        seed,
        len(train_idx),
        len(val_idx),
        list(mods),
        device,
    )
    return run_epochs(model, data, train_idx, val_idx, mods, cfg, fold, seed, stopper, model_name, device)


class EarlyStopping:
    """Watches the inner-val score after each epoch; keeps a deep copy of the best epoch's weights."""

    def __init__(self, patience: int, metric: str, epochs: int):
        self.patience, self.metric = patience, metric
        self.best, self.state, self.epoch, self.bad = math.inf, None, epochs, 0

    @classmethod
    def of(cls, cfg, n_val: int, fold: int) -> EarlyStopping | None:
        """The `training` section's early stopping (None when off); an error without `val` patients."""
        if cfg.early_stopping_patience is None:
            return None
        if n_val == 0:
            raise ValueError(
                f"training.early_stopping_patience is {cfg.early_stopping_patience} but fold {fold} has no inner "
                "`val` patients; set splits.inner_val_fraction > 0 or remove early_stopping_patience"
            )
        return cls(cfg.early_stopping_patience, cfg.early_stopping_metric, cfg.epochs)

    def stop(self, model: torch.nn.Module, row: dict) -> bool:
        """Record epoch `row`; True when `patience` epochs in a row did not improve on the best."""
        score = row["val_loss"] if self.metric == "loss" else -row["val_cindex"]
        if score < self.best:  # a NaN score never improves
            self.best, self.state, self.epoch, self.bad = score, copy.deepcopy(model.state_dict()), row["epoch"], 0
            return False
        self.bad += 1
        return self.bad >= self.patience


def run_epochs(
    model: torch.nn.Module,
    data: FoldData,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    mods: Sequence[str],
    cfg,
    fold: int,
    seed: int,
    stopper: EarlyStopping | None,
    model_name: str,
    device: torch.device,
) -> tuple[torch.nn.Module, pd.DataFrame, int]:
    """The epoch loop: train, score the inner val split, stop early; (model, log, epoch it holds)."""
    opt = _optimizer(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = []
    for epoch in tqdm(range(1, cfg.epochs + 1), desc=f"{model_name} fold {fold}", disable=None, unit="epoch"):
        t0 = time.perf_counter()
        if cfg.balanced_sampling:
            order = balanced_order(data, train_idx, gen)
        else:
            order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        loss, c_train = train_epoch(model, opt, data, order, mods, cfg, rng, device, desc=f"epoch {epoch}")
        row = {
            "epoch": epoch,
            "train_loss": loss,
            "train_cindex": c_train,
            "val_loss": math.nan,
            "val_cindex": math.nan,
        }
        if len(val_idx):
            pv = predict(model, data, val_idx, mods, cfg.eval_batch_size, device, alpha=cfg.alpha)
            row["val_loss"] = pv.loss
            row["val_cindex"] = cindex(data.time[val_idx], data.event[val_idx], pv.risk)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        log.info("fold %d epoch %d: %s", fold, epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
        if stopper is not None and stopper.stop(model, row):
            log.info("early stopping at epoch %d; restoring epoch %d", epoch, stopper.epoch)
            break
    if stopper is not None and stopper.state is not None:
        model.load_state_dict(stopper.state)
    train_log = pd.DataFrame(rows)
    held = stopper.epoch if stopper is not None else len(rows)
    train_log["best"] = train_log["epoch"] == held
    return model, train_log, held


def fit_closed_form(model, data: FoldData, train_idx, val_idx, mods, seed: int, model_name: str, fold: int):
    """A closed-form model (`model.fit`) on the training patients; the log is one row with what it chose."""
    t0 = time.perf_counter()
    x = np.concatenate([data.tabular[m][train_idx] for m in mods], axis=1)
    info = model.fit(x, data.time[train_idx], data.event[train_idx], data.edges, seed=seed)
    row = {"epoch": 1, "train_loss": math.nan, "val_loss": math.nan, "val_cindex": math.nan}
    model.eval()
    row["train_cindex"] = cindex(
        data.time[train_idx], data.event[train_idx], predict(model, data, train_idx, mods, len(train_idx)).risk
    )
    if len(val_idx):
        row["val_cindex"] = cindex(
            data.time[val_idx], data.event[val_idx], predict(model, data, val_idx, mods, len(val_idx)).risk
        )
    row.update(seconds=time.perf_counter() - t0, **info)
    log.info(
        "model %s fold %d: %s fitted on %d training patients: %s",
        model_name,
        fold,
        type(model).__name__,
        len(train_idx),
        info,
    )
    return model, pd.DataFrame([row]).assign(best=True), 1
