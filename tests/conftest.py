"""Shared test fixtures: paths to the repository and to the real data in ../shared/data; slow test
files first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _find_shared_data() -> Path:
    """HEALNET_SHARED_DATA, else ../shared/data beside the checkout, else the workplace copy."""
    if "HEALNET_SHARED_DATA" in os.environ:
        return Path(os.environ["HEALNET_SHARED_DATA"])
    for candidate in (REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if candidate.is_dir():
            return candidate
    return REPO.parent / "shared" / "data"


SHARED_DATA = _find_shared_data()


def pytest_collection_modifyitems(items):
    """Files marked `slow` (minutes each) run first: `make test` spreads whole files over the cores
    (pytest -n auto --dist loadfile), and a long file handed out last would leave the others idle."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: files stay whole


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def _snakemake_in(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """This checkout's workflow run in `workdir` with config.yaml + `workdir/extra.yaml` on 2 cores;
    `args` are targets and options. The venv's bin comes first on PATH: the rules call `healnet`."""
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "snakemake"), "--snakefile", str(REPO / "workflow" / "Snakefile")]
    cmd += ["--configfile", str(REPO / "config.yaml"), "extra.yaml", "--cores", "2", *args]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def snakemake_in():
    """`snakemake_in(workdir, *targets_and_options, timeout=900)`: see _snakemake_in."""
    return _snakemake_in


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real TCGA tables and slides; tests that need them skip with the reason."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (set HEALNET_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def single_thread():
    """Small models run much faster single-threaded on a shared 2-core machine (no OpenMP spin-waiting).
    Modules opt in with `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
