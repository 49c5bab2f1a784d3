"""What the machine running Snakemake has, found without importing torch (DAG building stays fast)."""

from __future__ import annotations

import os
from pathlib import Path


def has_nvidia_gpu() -> bool:
    """Whether an NVIDIA GPU is visible here: a /dev/nvidia<N> device node, not hidden by CUDA_VISIBLE_DEVICES."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))
