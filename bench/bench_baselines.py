"""Benchmark: training time per fold of every paper model (HEALNet and the five baselines).

Two modes:
- default: each model of `paper.models` trained by `healnet.training.loop.train_fold` (the code the
  `train` rule runs) on the same synthetic fold, with its config.yaml params and the `training`
  section (batch 1, 8 accumulated micro-batches, balanced sampling), for `--epochs` epochs.
  Patients carry a bag of `--patches` 1024-d patch features (ResNet50-layer3 size) and `--features`
  omic values; 10% lack slides and 10% omics. Prints seconds per fold, per epoch, per patient-epoch,
  the projection to `training.epochs`, and the parameter count. Exits 1 when a model's projected
  fold time exceeds `--target-s`.
- `--from-benchmarks DIR`: the Snakemake benchmark files of a finished run
  (`DIR/<cohort>/train/<model>_fold<k>.tsv`, written by the `train` rule), summarised per cohort
  and model (mean and max seconds over folds).

Run: `python bench/bench_baselines.py [--epochs 2] [--device cpu|cuda] [--threads 2]` or
`python bench/bench_baselines.py --from-benchmarks benchmarks`.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
D = 1024


def synthetic_fold(n: int, patches: int, features: int, seed: int = 0):
    """80% train / 20% test patients; risk in omics feature 0 and patch feature 0."""
    from healnet.training.data import FoldData, SlideBag, WsiBags

    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time_ = rng.exponential(30 * np.exp(-risk))
    event = (rng.random(n) > 0.4).astype(int)
    edges = np.quantile(time_, [0, 0.25, 0.5, 0.75, 1])
    edges[0], edges[-1] = time_.min() - 1e-6, time_.max() + 1e-6
    omics = rng.normal(size=(n, features)).astype(np.float32)
    omics[:, 0] = risk
    has_omics, has_wsi = rng.random(n) > 0.1, rng.random(n) > 0.1
    has_wsi |= ~has_omics
    bags = {}
    for i in np.flatnonzero(has_wsi):
        feats = rng.normal(size=(patches, D)).astype(np.float32)
        feats[:, 0] += risk[i]
        coords = np.stack([np.arange(patches) * 224, np.zeros(patches)], 1).astype(np.int64)
        bags[f"P{i}"] = [SlideBag(f"S{i}", feats, coords, 224)]
    omics[~has_omics] = 0
    n_test = n // 5
    return FoldData(
        case_ids=[f"P{i}" for i in range(n)],
        time=time_,
        event=event,
        bins=np.searchsorted(edges[1:-1], time_, side="right"),
        edges=edges,
        tabular={"omics": omics},
        tabular_present={"omics": has_omics},
        feature_names={"omics": [f"G{j}_rnaseq" for j in range(features)]},
        wsi=WsiBags.from_arrays(bags),
        split_of=np.array(["train"] * (n - n_test) + ["test"] * n_test),
    )


def train_times(args: argparse.Namespace) -> pd.DataFrame:
    import torch

    from healnet.config import load_config
    from healnet.training.loop import train_fold

    cfg = load_config(REPO / "config.yaml")
    training = cfg.training.model_copy(update={"epochs": args.epochs, "device": args.device})
    data = synthetic_fold(args.patients, args.patches, args.features)
    n_train = int((data.split_of == "train").sum())
    rows = []
    models = args.models or cfg.paper.models
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up (imports such as scikit-survival, first kernels), so the first model is not charged for it.
        spec = cfg.models[models[0]]
        train_fold(
            data,
            spec.architecture,
            spec.modalities,
            spec.params,
            training.model_copy(update={"epochs": 1}),
            0,
            Path(tmp) / "warmup",
            "warmup",
            threads=args.threads,
        )
        for model in models:
            spec = cfg.models[model]
            t0 = time.perf_counter()
            train_fold(
                data,
                spec.architecture,
                spec.modalities,
                spec.params,
                training,
                0,
                Path(tmp) / model,
                model,
                threads=args.threads,
            )
            if args.device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            ckpt = torch.load(Path(tmp) / model / "checkpoint.pt", map_location="cpu", weights_only=True)
            rows.append(
                {
                    "model": model,
                    "architecture": spec.architecture,
                    "modalities": "+".join(spec.modalities),
                    "parameters": sum(v.numel() for v in ckpt["state_dict"].values()),
                    "fold_s": seconds,
                    "epoch_s": seconds / args.epochs,
                    "ms_per_patient_epoch": 1000 * seconds / (args.epochs * n_train),
                    f"projected_{cfg.training.epochs}_epochs_s": seconds / args.epochs * cfg.training.epochs,
                }
            )
            print(f"{model}: {seconds:.1f} s for {args.epochs} epochs", file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


def from_benchmarks(root: Path) -> pd.DataFrame:
    """Mean/max seconds per fold of each (cohort, model) from the train rule's benchmark files."""
    rows = []
    for path in sorted(root.glob("*/train/*_fold*.tsv")):
        m = re.fullmatch(r"(.+)_fold(\d+)\.tsv", path.name)
        if m:
            s = pd.read_csv(path, sep="\t")["s"].iloc[-1]
            rows.append({"cohort": path.parent.parent.name, "model": m.group(1), "fold": int(m.group(2)), "s": s})
    if not rows:
        raise SystemExit(f"no train benchmarks under {root} (expected <cohort>/train/<model>_fold<k>.tsv)")
    df = pd.DataFrame(rows)
    return (
        df.groupby(["cohort", "model"])
        .agg(folds=("fold", "count"), mean_s=("s", "mean"), max_s=("s", "max"))
        .reset_index()
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=40, help="patients in the fold (80%% train)")
    p.add_argument("--patches", type=int, default=100, help="patches per slide bag")
    p.add_argument("--features", type=int, default=100, help="omic features")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--models", nargs="*", help="default: paper.models of config.yaml")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--target-s", type=float, default=300.0, help="max projected seconds per fold of any model")
    p.add_argument("--from-benchmarks", type=Path, help="summarise a run's benchmarks/ folder instead")
    args = p.parse_args()
    pd.set_option("display.width", 200)
    if args.from_benchmarks:
        print(from_benchmarks(args.from_benchmarks).to_string(index=False, float_format="%.1f"))
        return 0
    table = train_times(args)
    print(
        f"training time per fold: {args.patients} patients (80% train), {args.patches} patches x {D}, "
        f"{args.features} omic features, {args.epochs} epochs, {args.device}, {args.threads} threads"
    )
    print(table.to_string(index=False, float_format="%.2f"))
    slow = table[table.iloc[:, -1] > args.target_s]
    if len(slow):
        print(f"MISSED target: projected fold time over {args.target_s} s for {list(slow['model'])}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
