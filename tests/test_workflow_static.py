"""Static checks of the workflow: Snakemake's linter and snakefmt are clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_snakemake_lint_is_clean(repo):
    result = subprocess.run(
        [str(BIN / "snakemake"), "--lint"], cwd=repo, capture_output=True, text=True, timeout=300
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Lints for" not in out, out


def test_snakefmt_check_is_clean(repo):
    result = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "workflow"], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
