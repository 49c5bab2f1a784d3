"""File helpers: atomic writes (an interrupted job never leaves a file that looks complete), and
reads cached while a file is unchanged."""

from __future__ import annotations

import functools
import glob
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:  # pandas costs ~0.6 s to import: the per-slide stages that never read a table skip it
    import pandas as pd

log = logging.getLogger(__name__)


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def clean_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary siblings (`.{name}.tmp-*`) that an earlier, killed write of `path` left.
    Called when `path` is written again: one job writes one output (Snakemake's contract), so a
    sibling of the output being written now belongs to a writer that is gone."""
    stale = sorted(path.parent.glob(f".{glob.escape(path.name)}.tmp-*"))
    for tmp in stale:
        log.warning("removing %s, left by an interrupted write of %s", tmp, path.name)
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return stale


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds.

    Works for files and directories (e.g. Zarr stores). The sibling lives in the same folder so
    the final rename is atomic on POSIX file systems. Siblings left by a killed earlier write of the
    same output are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_tsv(df: pd.DataFrame, path: str | Path, **kwargs) -> None:
    """Write a TSV (gzip when the name ends in .gz) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        compression = "gzip" if path.suffix == ".gz" else None
        df.to_csv(tmp, sep="\t", index=False, compression=compression, **kwargs)


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_png(rgb: np.ndarray, path: str | Path) -> None:
    """Write an RGB uint8 image (H, W, 3) as a PNG atomically."""
    import cv2

    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"could not encode {path} as PNG")
        Path(tmp).write_bytes(buf.tobytes())


def read_stage_tsv(path: str | Path, what: str, rule: str, dtype=None) -> pd.DataFrame:
    """A per-patient TSV that a pipeline stage wrote (`what`, e.g. "labels file"), checked for what every
    such file shares: it exists (else: run `rule`), has a `case_id` column and lists each patient once."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist; run the `{rule}` rule (healnet {rule}) first")
    df = pd.read_csv(path, sep="\t", dtype=dtype if dtype is not None else {"case_id": str})
    if "case_id" not in df.columns:
        raise ValueError(f"{what} {path}: no `case_id` column; regenerate it with `healnet {rule}`")
    dup = df["case_id"][df["case_id"].duplicated()].tolist()
    if dup:
        raise ValueError(f"{what} {path}: patient(s) listed twice: {dup[:10]}; regenerate it with `healnet {rule}`")
    return df


T = TypeVar("T")


def cached_while_unchanged(read: Callable[[str | Path], T]) -> Callable[[str | Path], T]:
    """Cache `read(path)` per process, keyed by the file's path, modification time and size.

    For tables the workflow consults once per job (sample sheets, GDC manifests): one read per
    process instead of one per job, and a file rewritten by a checkpoint is read again.
    """

    @functools.lru_cache(maxsize=64)
    def cached(path: str, mtime_ns: int, size: int) -> T:
        return read(path)

    @functools.wraps(read)
    def wrapper(path: str | Path) -> T:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return read(path)  # raises the reader's own, clearer error
        return cached(str(path), st.st_mtime_ns, st.st_size)

    wrapper.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return wrapper
