"""Clinical + omics tables and splits: sha256-verified downloads (or copies of a local file).

Where they come from by default (the pinned PORPOISE tables of known TCGA projects):
healnet/acquire/sources.py.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from urllib.parse import urlparse

from healnet.acquire.http import RetryPolicy, download, file_digest
from healnet.io import atomic_path

log = logging.getLogger(__name__)


def is_local(source: str) -> bool:
    return urlparse(source).scheme in ("", "file")


def fetch_table(source: str, dest: str | Path, sha256: str, policy: RetryPolicy = RetryPolicy()) -> Path:
    """Put the table at `source` (URL or local path) into `dest` once its sha256 matches."""
    dest = Path(dest)
    if is_local(source):
        path = Path(urlparse(source).path if source.startswith("file:") else source)
        if not path.is_file():
            raise FileNotFoundError(f"table {path} does not exist; fix the path or give a URL")
        actual = file_digest(path, "sha256")
        if actual != sha256.lower():
            raise RuntimeError(
                f"table {path}: sha256 {actual} does not match the pinned {sha256}; "
                "use the right file or update the pinned checksum"
            )
        with atomic_path(dest) as tmp:
            shutil.copyfile(path, tmp)
        log.info("%s: copied from %s (sha256 verified)", dest, path)
        return dest
    return download(source, dest, checksum=("sha256", sha256), policy=policy, what=dest.name)
