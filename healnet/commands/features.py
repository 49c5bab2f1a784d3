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
    p.add_argument(
        "--threads",
        type=int,
        help="cores granted to this job (Snakemake's {threads}): the readers "
        "are capped at threads - 1, one core staying with the main process",
    )


def run(args: argparse.Namespace) -> None:
    from healnet import config
    from healnet.cli import parse_params
    from healnet.wsi.stages import run_features

    features = parse_params(args.features, config.Features)
    if args.threads is not None:
        features = fit_to_threads(features, args.threads)
    run_features(
        args.slide,
        args.patches,
        args.output,
        args.encoder_name,
        parse_params(args.encoder, config.Encoder),
        features,
        parse_params(args.reading, config.SlideReading),
    )


def fit_to_threads(features, threads: int):
    """The features config with at most `threads - 1` reader processes, and torch limited to `threads`
    (on a cluster node torch would otherwise start a thread per core of the whole node)."""
    import logging

    import torch

    threads = max(1, threads)
    torch.set_num_threads(threads)
    readers = min(features.num_workers, threads - 1)
    if readers < features.num_workers:
        logging.getLogger(__name__).warning(
            "features.num_workers %d capped to %d reader(s): this job has %d thread(s); give the features rule "
            "more (snakemake --cores, or --set-threads features=%d)",
            features.num_workers,
            readers,
            threads,
            features.num_workers + 1,
        )
    return features.model_copy(update={"num_workers": readers})
