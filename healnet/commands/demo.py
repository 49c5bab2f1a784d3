"""`healnet demo-cohort`: write the synthetic demo cohort (slides, sample sheet, TCGA-format table)."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--outdir", required=True, help="output folder, e.g. data/demo (slide paths are relative to it)")
    p.add_argument("--params", help="the `demo` config section as JSON (defaults when omitted)")
    p.add_argument("--threads", type=int, default=1, help="slides painted in parallel (processes)")


def run(args: argparse.Namespace) -> None:
    import time

    from healnet.cli import parse_params
    from healnet.config import Demo
    from healnet.demo.cohort import summarize, write_cohort

    cfg = parse_params(args.params, Demo)
    start = time.perf_counter()
    cohort = write_cohort(cfg, args.outdir, workers=max(1, args.threads))
    s = summarize(cohort, args.outdir)
    log.info(
        "demo cohort in %s: %d patients, %d slides (%d Aperio SVS 0.25 um/px, %d TIFF 0.5 um/px), "
        "%d with two slides, %d without slides, %d without omics; censored %.0f%%; months %.1f-%.1f; "
        "c-index of true risk %.3f (slide part %.3f, omics part %.3f); %.1f MB on disk; %.1f s",
        args.outdir,
        s["patients"],
        s["slides"],
        s["svs_slides"],
        s["slides"] - s["svs_slides"],
        s["two_slides"],
        s["no_slide"],
        s["no_omics"],
        100 * s["censored_fraction"],
        s["months_min"],
        s["months_max"],
        s["cindex_risk"],
        s["cindex_risk_wsi"],
        s["cindex_risk_omics"],
        s["disk_bytes"] / 1e6,
        time.perf_counter() - start,
    )
