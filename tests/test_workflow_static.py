"""Static checks: Snakemake's linter, snakefmt and ruff (lint + format, pyproject.toml) are clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_snakemake_lint_is_clean(repo):
    result = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=repo, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Lints for" not in out, out


def test_snakefmt_check_is_clean(repo):
    result = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "workflow"], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint_and_format_are_clean(repo):
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run([str(BIN / "ruff"), *args], cwd=repo, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"ruff {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_makefile_puts_the_venv_on_path(repo):
    """Rules and tests call `healnet` by name: a recipe that runs Snakemake, pytest or a benchmark must
    put the venv's bin on PATH, or `make demo` fails at its first rule in a shell without the venv."""
    lines = (repo / "Makefile").read_text().splitlines()
    runs = [
        line
        for line in lines
        if line.startswith("\t")
        and any(tool in line for tool in ("$(BIN)/snakemake", "$(BIN)/pytest", "$(BIN)/python $$f"))
    ]
    assert len(runs) >= 4, runs  # demo, test, bench, lint
    for line in runs:
        assert "PATH=$(abspath $(BIN)):$$PATH" in line, f"Makefile recipe without the venv on PATH: {line.strip()}"
