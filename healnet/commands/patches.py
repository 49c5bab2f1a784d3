"""`healnet patches`: the 224 px / 0.5 um/px patch grid over a slide's tissue, as a Zarr store."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slide", required=True, help="slide file")
    p.add_argument("--slide-id", required=True)
    p.add_argument("--tissue", required=True, help="tissue GeoJSON from `healnet tissue`")
    p.add_argument("--output", required=True, help="output: patches/{slide}.zarr")
    p.add_argument("--reading", help="slide_reading config section (JSON)")
    p.add_argument("--patching", help="patching config section (JSON)")


def run(args: argparse.Namespace) -> None:
    from healnet import config
    from healnet.cli import parse_params
    from healnet.wsi.stages import run_patches

    run_patches(
        args.slide,
        args.slide_id,
        args.tissue,
        args.output,
        parse_params(args.reading, config.SlideReading),
        parse_params(args.patching, config.Patching),
    )
