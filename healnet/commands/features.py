"""`healnet features`: encode every patch of a slide into features/{encoder}/{slide}.zarr."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slide", required=True, help="slide file")
    p.add_argument("--patches", required=True, help="patch store from `healnet patches`")
    p.add_argument("--output", required=True, help="output: features/{encoder}/{slide}.zarr")
    p.add_argument("--encoder-name", required=True, help="the encoder's name (key of `encoders`)")
    p.add_argument("--encoder", help="that encoder's config (JSON)")
    p.add_argument("--features", help="features config section (JSON)")
    p.add_argument("--reading", help="slide_reading config section (JSON)")


def run(args: argparse.Namespace) -> None:
    from healnet import config
    from healnet.cli import parse_params
    from healnet.wsi.stages import run_features

    run_features(args.slide, args.patches, args.output, args.encoder_name, parse_params(args.encoder, config.Encoder),
                 parse_params(args.features, config.Features), parse_params(args.reading, config.SlideReading))
