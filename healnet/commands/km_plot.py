"""`healnet km-plot`: Kaplan-Meier curves of predicted low/high-risk groups of a cohort."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--predictions",
        nargs="+",
        required=True,
        help="predictions.tsv files of the trained models (results/<cohort>/models/<model>/fold<k>/predictions.tsv)",
    )
    p.add_argument("--plot", required=True, help="figure to write (.png, .pdf or .svg)")
    p.add_argument("--stats", required=True, help="TSV to write: group sizes, median survival, log-rank test per model")
    p.add_argument("--title", default="", help="figure title, e.g. the cohort name")


def run(args: argparse.Namespace) -> None:
    from healnet.report import km_report

    km_report(args.predictions, args.plot, args.stats, args.title)
