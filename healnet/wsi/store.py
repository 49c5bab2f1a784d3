"""Zarr v3 stores per slide: patch coordinates (`patches/{slide}.zarr`) and features
(`features/{encoder}/{slide}.zarr`).

Both are groups with a `coords` array (N, 2) int64 (level-0 top-left) and attrs; a feature store also
has `features` (N, D) float32, chunked by patches and compressed. attrs always hold `status`
(`STATUSES`: ok, failed, no_tissue) and `reason`; a failed or tissue-less slide has N = 0, so downstream
code reads every slide the same way and treats the patient as WSI-missing when no slide has patches.
Stores are written to a temporary sibling and renamed into place when complete.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from healnet import __version__
from healnet.io import atomic_path

# A slide's status, in every store's and GeoJSON's attrs and in the slide table (results/{c}/qc/slides.tsv).
OK, FAILED, NO_TISSUE = "ok", "failed", "no_tissue"
STATUSES = (OK, FAILED, NO_TISSUE)


@dataclass
class FeatureStore:
    features: np.ndarray  # float32 (N, D)
    coords: np.ndarray  # int64 (N, 2), level-0 top-left
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.attrs["status"]


@dataclass
class PatchStore:
    coords: np.ndarray  # int64 (N, 2)
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.attrs["status"]


def _jsonable(value: Any) -> Any:
    """attrs are JSON: numpy scalars become Python numbers, NaN becomes None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _check_attrs(attrs: dict[str, Any], path: Path) -> dict[str, Any]:
    if attrs.get("status") not in STATUSES:
        raise ValueError(f"store {path}: status must be one of {STATUSES}, got {attrs.get('status')!r}")
    attrs = {"reason": "", "healnet_version": __version__, **attrs}
    return _jsonable(attrs)


def _write(path: str | Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any], chunk: int) -> None:
    import zarr
    from zarr.codecs import BloscCodec

    path = Path(path)
    attrs = _check_attrs(attrs, path)
    with atomic_path(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for name, data in arrays.items():
            chunks = (max(1, min(chunk, len(data))),) + data.shape[1:]
            arr = group.create_array(
                name,
                shape=data.shape,
                chunks=chunks,
                dtype=data.dtype,
                compressors=BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"),
            )
            if len(data):
                arr[:] = data
        group.attrs.update(attrs)


def _open(path: str | Path, kind: str, fix: str):
    import zarr

    path = Path(path)
    if not (path / "zarr.json").exists():
        raise FileNotFoundError(f"{kind} store {path} does not exist or is incomplete; {fix}")
    return zarr.open_group(str(path), mode="r")


def write_patch_store(path: str | Path, coords: np.ndarray, attrs: dict[str, Any], chunk: int = 4096) -> None:
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    _write(path, {"coords": coords}, {**attrs, "n_patches": len(coords)}, chunk)


def read_patch_store(path: str | Path) -> PatchStore:
    group = _open(path, "patch", "rerun the patches rule for this slide")
    return PatchStore(np.asarray(group["coords"][:], np.int64).reshape(-1, 2), dict(group.attrs))


def write_feature_store(
    path: str | Path, features: np.ndarray, coords: np.ndarray, attrs: dict[str, Any], chunk: int = 4096
) -> None:
    features = np.asarray(features, np.float32)
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    if features.ndim != 2 or len(features) != len(coords):
        raise ValueError(f"feature store {path}: features {features.shape} do not match coords {coords.shape}")
    attrs = {**attrs, "n_patches": len(coords), "feature_dim": int(features.shape[1])}
    _write(path, {"features": features, "coords": coords}, attrs, chunk)


def read_feature_store(path: str | Path) -> FeatureStore:
    """Features (N, D) float32, coords (N, 2) int64 and attrs of one slide."""
    group = _open(path, "feature", "rerun the features rule for this slide")
    feats = np.asarray(group["features"][:], np.float32)
    coords = np.asarray(group["coords"][:], np.int64).reshape(-1, 2)
    return FeatureStore(feats, coords, dict(group.attrs))


def read_store_attrs(path: str | Path) -> dict[str, Any]:
    """attrs only (no arrays), e.g. for the per-cohort QC table."""
    return dict(_open(path, "feature", "rerun the features rule for this slide").attrs)
