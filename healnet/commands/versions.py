"""`healnet versions`: the running stack against requirements.lock (a table, or a check)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from healnet.stack import LOCK

    p.add_argument("--lock", default=str(LOCK), help=f"the lock to compare with (default: {LOCK})")
    p.add_argument("--out", help="write the versions table (TSV: package, version, locked, status) here")
    p.add_argument(
        "--check",
        action="store_true",
        help="fail unless the lock covers setup.cfg and the installed distributions are exactly the lock's "
        "(what `make install` ends with)",
    )


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from healnet.stack import drift, installed_versions, read_lock, setup_cfg_requirements, stale, write_versions

    log = logging.getLogger("healnet.versions")
    if args.out:
        write_versions(args.out, args.lock)
    if args.check:
        locked = read_lock(args.lock)
        setup_cfg = Path(args.lock).parent / "setup.cfg"  # the lock's sources, when beside it (a checkout)
        problems = stale(locked, setup_cfg_requirements(setup_cfg)) if setup_cfg.is_file() else []
        if problems:
            raise RuntimeError(
                f"{args.lock} is stale against {setup_cfg}: "
                + "; ".join(problems)
                + ". Fix: `make lock`, then `make install`"
            )
        found = drift(locked, installed_versions())
        if found:
            raise RuntimeError(found.message(args.lock))
        log.info("installed stack is exactly %s", args.lock)
    elif not args.out:
        raise ValueError("healnet versions: give --out FILE (write the table) and/or --check")
    return 0
