"""`healnet predict`: score new patients with a trained run folder (models/<model>/fold<k>) alone."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run folder models/<model>/fold<k> (or its checkpoint.pt)")
    p.add_argument("--omics", help="omics matrix (omics.tsv.gz) or clinical + omics table (TCGA format .csv/.zip)")
    p.add_argument("--features", nargs="*", default=[], help="feature stores of the patients' slides")
    p.add_argument("--sheet", help="sample sheet mapping the slides to patients (needed with --features)")
    p.add_argument("--cases", nargs="*", help="patients to score (default: every patient of the inputs)")
    p.add_argument("--out", required=True, help="output predictions TSV (case_id, risk, surv_<j>, modalities)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def run(args: argparse.Namespace) -> None:
    from healnet.inference import load_run
    from healnet.io import write_tsv

    trained = load_run(args.run, args.device)
    pred = trained.predict(args.omics, args.features, args.sheet, args.cases)
    write_tsv(pred, args.out)
    log.info(
        "%s: %d patients scored by %s (%s) -> %s",
        args.run,
        len(pred),
        trained.info["model"],
        "+".join(trained.modalities),
        args.out,
    )
