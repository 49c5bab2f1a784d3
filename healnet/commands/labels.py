"""`healnet labels`: survival labels and discrete-time bins (results/{cohort}/labels.tsv)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", required=True, help="clinical + omics table (.csv or .csv.zip, TCGA format)")
    p.add_argument("--output", required=True, help="labels TSV to write")
    p.add_argument("--params", help="the `labels` config section as JSON (defaults otherwise)")


def run(args: argparse.Namespace) -> None:
    from healnet.cli import parse_params
    from healnet.config import Labels
    from healnet.survival.labels import build_labels

    build_labels(args.table, args.output, parse_params(args.params, Labels))
