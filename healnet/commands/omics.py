"""`healnet omics`: the cohort's per-patient omics matrix (results/{cohort}/omics.tsv.gz)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", required=True, help="clinical + omics table (.csv or .csv.zip, TCGA format)")
    p.add_argument("--output", required=True, help="omics matrix to write (.tsv.gz)")
    p.add_argument("--params", help="the `omics` config section as JSON (defaults otherwise)")


def run(args: argparse.Namespace) -> None:
    from healnet.cli import parse_params
    from healnet.config import Omics
    from healnet.omics.preprocess import build_omics

    build_omics(args.table, args.output, parse_params(args.params, Omics))
