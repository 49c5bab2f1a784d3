"""Model registry: every survival model the pipeline can train, by architecture name.

Contract shared by all models (HEALNet and baselines):
- constructed as `cls(input_dims: dict[str, int], n_bins: int, **params)`, where `input_dims`
  maps each modality the model uses to its size: `wsi` -> patch feature dim D; a tabular modality
  (`omics`, `rnaseq`, `cnv`, `mut`) -> number of features F;
- `forward(batch) -> logits (B, n_bins)` (hazards = sigmoid(logits)), where `batch` holds, for each
  modality m of the model:
    batch[m]            float tensor: wsi (B, N, D) padded bags; tabular (B, F)
    batch["wsi_mask"]   bool (B, N), True for real patches (key-padding mask)
    batch["present"][m] bool (B,), the modality is present for that sample
  A sample with no modality present is an error.
- a model that needs the omic feature names (e.g. to group genes into families) declares a
  `feature_names: dict[str, list[str]]` keyword; `build_model` passes it only to those.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch.nn as nn

REGISTRY: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        REGISTRY[name] = cls
        return cls

    return deco


def build_model(
    architecture: str,
    input_dims: dict[str, int],
    n_bins: int,
    params: dict | None = None,
    feature_names: dict[str, list[str]] | None = None,
) -> nn.Module:
    _import_all()
    if architecture not in REGISTRY:
        raise ValueError(f"unknown model architecture {architecture!r}; known: {sorted(REGISTRY)}")
    cls = REGISTRY[architecture]
    kwargs = dict(params or {})
    if "feature_names" in inspect.signature(cls.__init__).parameters:
        kwargs["feature_names"] = feature_names or {}
    return cls(input_dims=input_dims, n_bins=n_bins, **kwargs)


def _import_all() -> None:
    """Import the modules that register architectures."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
