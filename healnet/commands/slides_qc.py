"""`healnet slides-qc`: one row per slide (status, reason, mpp, tissue mm^2, patches) for a cohort."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sheet", required=True, help="the cohort's sample sheet")
    p.add_argument("--stores", nargs="*", default=[], help="the cohort's feature stores (<slide_id>.zarr)")
    p.add_argument("--output", required=True, help="output: results/{cohort}/qc/slides.tsv")


def run(args: argparse.Namespace) -> None:
    from healnet.io import write_tsv
    from healnet.wsi.qc import slides_table

    write_tsv(slides_table(args.sheet, args.stores), args.output)
