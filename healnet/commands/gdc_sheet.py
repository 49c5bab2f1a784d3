"""`healnet gdc-sheet`: the sample sheet of a GDC cohort, from its manifest and downloaded slides."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="manifest TSV from `healnet gdc-manifest`")
    p.add_argument("--slides-dir", required=True, help="folder the slides were downloaded into")
    p.add_argument("--out", required=True, help="sample sheet TSV to write (case_id, slide_id, path)")


def run(args: argparse.Namespace) -> None:
    from healnet.acquire.gdc import manifest_to_sheet, read_manifest
    from healnet.io import write_tsv

    sheet = manifest_to_sheet(read_manifest(args.manifest), args.slides_dir)
    write_tsv(sheet, args.out)
    log.info("%s: %d slides of %d patients", args.out, len(sheet), sheet["case_id"].nunique())
