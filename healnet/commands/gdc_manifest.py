"""`healnet gdc-manifest`: list a GDC project's diagnostic slides into a manifest TSV."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", required=True, help="GDC project id, e.g. TCGA-BLCA")
    p.add_argument("--out", required=True, help="manifest TSV to write (a .json sidecar records the query)")
    p.add_argument("--cases", nargs="*", default=None, help="only these patient barcodes (TCGA-XX-XXXX)")
    p.add_argument("--max-files", type=int, default=None, help="at most this many slides (a quick try)")
    p.add_argument("--params", help="the `gdc` config section as JSON (base_url, token_file, retries, ...)")


def run(args: argparse.Namespace) -> None:
    from healnet.acquire.gdc import ManifestQuery, query_manifest, write_manifest
    from healnet.cli import parse_params
    from healnet.config import Gdc

    cfg = parse_params(args.params, Gdc)
    if args.max_files is not None and args.max_files < 1:
        raise ValueError(f"--max-files must be at least 1, not {args.max_files}")
    query = ManifestQuery(args.project, sorted(args.cases) if args.cases else None, args.max_files)
    manifest = query_manifest(cfg, query)
    write_manifest(manifest, query, args.out)
    log.info(
        "%s: %d slides of %d patients, %.1f GB",
        args.out,
        len(manifest),
        manifest["case_id"].nunique(),
        manifest["file_size"].sum() / 1e9,
    )
