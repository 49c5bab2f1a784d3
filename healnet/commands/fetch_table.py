"""`healnet fetch-table`: download (or copy) a clinical + omics table or split file, sha256-verified."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="http(s) URL, or a local path to copy")
    p.add_argument("--sha256", required=True, help="expected sha256 of the file")
    p.add_argument("--out", required=True, help="destination file")
    p.add_argument("--params", help="the `gdc` config section as JSON (retries and timeouts apply here too)")


def run(args: argparse.Namespace) -> None:
    from healnet.acquire.gdc import policy_of
    from healnet.acquire.tables import fetch_table
    from healnet.cli import parse_params
    from healnet.config import Gdc

    fetch_table(args.url, args.out, args.sha256, policy_of(parse_params(args.params, Gdc)))
