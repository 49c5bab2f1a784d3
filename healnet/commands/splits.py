"""`healnet splits`: patient-level cross-validation folds (results/{cohort}/splits/fold{k}.tsv).

All folds are computed and checked on every call (so cross-fold checks always run); `--fold`
writes one of them (one Snakemake job per fold), otherwise all are written to `--outdir`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", required=True, help="labels.tsv of the cohort")
    p.add_argument("--split-files", nargs="*", default=[], help="provided splits_{k}.csv files; none: generate folds")
    p.add_argument("--fold", type=int, help="write only this fold (to --output)")
    p.add_argument("--output", help="fold file to write with --fold")
    p.add_argument("--outdir", help="folder for fold{k}.tsv of every fold (without --fold)")
    p.add_argument("--params", help="the `splits` config section as JSON (defaults otherwise)")


def run(args: argparse.Namespace) -> None:
    from healnet.cli import parse_params
    from healnet.config import Splits
    from healnet.survival.splits import build_splits, order_split_files

    cfg = parse_params(args.params, Splits)
    if args.fold is not None:
        if not args.output:
            raise ValueError("healnet splits: --fold needs --output (the fold file to write)")
        outputs = {args.fold: args.output}
    else:
        if not args.outdir:
            raise ValueError("healnet splits: give --outdir (all folds) or --fold with --output")
        n = len(order_split_files(args.split_files)) if args.split_files else cfg.n_folds
        outputs = {k: Path(args.outdir) / f"fold{k}.tsv" for k in range(n)}
    build_splits(args.labels, outputs, cfg, args.split_files)
