"""`healnet report-table`: TSV tables as HTML pages, for the Snakemake report (shown inline there)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tsv", nargs="+", required=True, help="tables to render (e.g. results/<cohort>/cindex.tsv)")
    p.add_argument("--html", nargs="+", required=True, help="HTML file to write for each table, in the same order")
    p.add_argument("--title", default="", help="prefix of each page's title, e.g. the cohort name")


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from healnet.report import tsv_to_html

    if len(args.tsv) != len(args.html):
        raise ValueError(
            f"healnet report-table: {len(args.tsv)} --tsv tables but {len(args.html)} --html outputs; "
            "give one HTML path per table"
        )
    for tsv, out in zip(args.tsv, args.html):
        name = Path(tsv).name.removesuffix(".tsv")
        tsv_to_html(tsv, out, f"{args.title}: {name}" if args.title else name)
