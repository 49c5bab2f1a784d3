"""`healnet validate-config`: check config files the way the workflow does."""

from __future__ import annotations

import argparse

import yaml

from healnet.config import load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("configfiles", nargs="+", help="config.yaml, then any extra files merged over it")


def run(args: argparse.Namespace) -> None:
    cfg = load_config(*args.configfiles)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
