"""`healnet tissue`: tissue polygons (GeoJSON, level-0 px) and a QC picture for one slide."""

from __future__ import annotations

import argparse


def optional_mpp(text: str) -> float | None:
    """'' (no value in the sample sheet / cohort) or a positive number."""
    if text is None or str(text).strip() in ("", "nan", "None"):
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--mpp must be > 0, got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slide", required=True, help="slide file")
    p.add_argument("--slide-id", required=True)
    p.add_argument(
        "--mpp",
        type=optional_mpp,
        default=None,
        help="level-0 um/px from the sample sheet, used only if the slide has none",
    )
    p.add_argument(
        "--cohort-mpp",
        type=optional_mpp,
        default=None,
        help="the cohort's level-0 um/px, used only if neither the slide nor --mpp gives one",
    )
    p.add_argument("--geojson", required=True, help="output: tissue polygons")
    p.add_argument("--qc", required=True, help="output: QC PNG")
    p.add_argument("--reading", help="slide_reading config section (JSON)")
    p.add_argument("--tissue", help="tissue config section (JSON)")
    p.add_argument("--patching", help="patching config section (JSON)")


def run(args: argparse.Namespace) -> None:
    from healnet import config
    from healnet.cli import parse_params
    from healnet.wsi.stages import run_tissue

    run_tissue(
        args.slide,
        args.slide_id,
        args.geojson,
        args.qc,
        parse_params(args.reading, config.SlideReading),
        parse_params(args.tissue, config.Tissue),
        parse_params(args.patching, config.Patching),
        args.mpp,
        args.cohort_mpp,
    )
