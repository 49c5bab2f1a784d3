"""`healnet gdc-download`: fetch GDC files (one, or all of a manifest), resumable and md5-verified."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    one = p.add_argument_group("one file (what the workflow's per-slide jobs do)")
    one.add_argument("--file-id", help="GDC file UUID")
    one.add_argument("--md5", help="expected md5sum (from the manifest)")
    one.add_argument("--size", type=int, help="expected size in bytes (from the manifest)")
    one.add_argument("--out", help="destination file")
    many = p.add_argument_group("every file of a manifest, one after the other")
    many.add_argument("--manifest", help="manifest TSV from `healnet gdc-manifest`")
    many.add_argument("--outdir", help="folder for the slides (files already there are skipped)")
    p.add_argument("--params", help="the `gdc` config section as JSON (base_url, token_file, retries, ...)")


def run(args: argparse.Namespace) -> None:
    from healnet.acquire.gdc import download_slide, read_manifest, session_for
    from healnet.cli import parse_params
    from healnet.config import Gdc

    cfg = parse_params(args.params, Gdc)
    if args.manifest:
        if not args.outdir:
            raise ValueError("--manifest needs --outdir, the folder to download into")
        manifest = read_manifest(args.manifest)
        session = session_for(cfg)
        todo = [r for r in manifest.itertuples() if not (Path(args.outdir) / r.file_name).is_file()]
        log.info("%s: %d of %d files to download", args.manifest, len(todo), len(manifest))
        for r in todo:
            download_slide(cfg, r.file_id, Path(args.outdir) / r.file_name, r.md5sum, int(r.file_size), session)
        return
    missing = [f"--{k.replace('_', '-')}" for k in ("file_id", "md5", "out") if not getattr(args, k)]
    if missing:
        raise ValueError(f"give {', '.join(missing)} (one file) or --manifest and --outdir (all files)")
    download_slide(cfg, args.file_id, args.out, args.md5, args.size)
