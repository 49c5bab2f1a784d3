"""`healnet env-yaml`: write envs/healnet.yaml (the rules' conda env) from requirements.lock."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from healnet.stack import LOCK, REPO

    p.add_argument("--lock", default=str(LOCK), help=f"pip-compile lock to read (default: {LOCK})")
    p.add_argument("--out", default=str(REPO / "envs" / "healnet.yaml"), help="conda env file to write")


def run(args: argparse.Namespace) -> None:
    from healnet.io import write_text
    from healnet.stack import env_yaml, lock_python, read_lock

    write_text(env_yaml(read_lock(args.lock), lock_python(args.lock)), args.out)
