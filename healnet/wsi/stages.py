"""The three per-slide WSI stages, as the CLI (and so the Snakemake rules) runs them.

Each stage always writes its outputs. A bad slide (unreadable, truncated, corrupt tile, no mpp, too
coarse, not brightfield) is a SlideError: with `on_slide_error: fail` it stops the run with the slide, the cause and
the fix; with `skip` the outputs carry `status: failed` and the reason, and the next stages pass that
status on, so the patient is treated as WSI-missing downstream. A slide without tissue is not an error:
its outputs carry `status: no_tissue`.
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np

from healnet import __version__, config
from healnet.io import write_png, write_text
from healnet.wsi import tissue as T
from healnet.wsi.integrity import check_tiles
from healnet.wsi.patches import patch_geometry, patch_grid
from healnet.wsi.slide import Slide, SlideError
from healnet.wsi.store import FAILED, NO_TISSUE, OK, read_patch_store, write_feature_store, write_patch_store

log = logging.getLogger(__name__)


def _on_error(err: SlideError, slide_id: str, reading: config.SlideReading) -> dict[str, Any]:
    """Raise (fail) or log and return the failed status (skip)."""
    if reading.on_slide_error == "fail":
        raise RuntimeError(
            f"slide {slide_id!r} ({err.path}): {err.reason}. Fix: {err.fix or 'check the file'}; or set "
            "slide_reading.on_slide_error: skip to record the slide as failed and go on without it"
        ) from None
    log.error("slide %s FAILED (recorded, on_slide_error: skip): %s; %s", slide_id, err.reason, err.fix)
    return {"status": FAILED, "reason": err.reason}


def run_tissue(
    slide_path: str,
    slide_id: str,
    geojson_path: str | Path,
    qc_path: str | Path,
    reading: config.SlideReading,
    tissue: config.Tissue,
    patching: config.Patching,
    mpp: float | None = None,
    cohort_mpp: float | None = None,
) -> dict[str, Any]:
    """Tissue polygons (GeoJSON, level-0 px) and the QC picture with the patch grid the next stage
    will keep. `mpp` (the sample sheet's), then `cohort_mpp`, are used only when the slide has no mpp
    (the source is recorded as `mpp_source`)."""
    meta: dict[str, Any] = {
        "slide_id": slide_id,
        "slide_path": str(slide_path),
        "mpp": None,
        "tissue_params": tissue.model_dump(),
    }
    try:
        with Slide.open(slide_path, reading, sheet_mpp=mpp, cohort_mpp=cohort_mpp) as slide:
            geometry = patch_geometry(slide.mpp.mean, slide.level_downsamples, patching, slide_path)
            rgb, scale = slide.image_at(tissue.thumbnail_mpp, patching.mpp_tolerance)
            dims = slide.dimensions
            mpp_info = slide.mpp
    except SlideError as err:
        meta.update(_on_error(err, slide_id, reading))
        write_text(json.dumps(T.tissue_geojson([], (1.0, 1.0), meta)), geojson_path)
        write_png(T.render_message(f"{slide_id}: FAILED", err.reason), qc_path)
        return meta

    um_per_px = (mpp_info.x / scale[0], mpp_info.y / scale[1])
    if tissue.slide_type == "brightfield":
        bright = T.check_brightfield(rgb, tissue)
        meta["brightfield"] = bright.to_dict()
        if bright.problem:
            err = SlideError(
                slide_path,
                f"not a brightfield slide: {bright.problem}",
                "if the cohort is fluorescence and meant to be, set tissue.slide_type: fluorescence "
                "(docs/slides.md); otherwise drop the slide from the sample sheet",
            )
            meta.update(
                _on_error(err, slide_id, reading), mpp=mpp_info.mean, mpp_source=mpp_info.source, dimensions=list(dims)
            )
            write_text(json.dumps(T.tissue_geojson([], (1.0, 1.0), meta)), geojson_path)
            write_png(T.render_not_brightfield(rgb, bright, f"{slide_id}: FAILED, not brightfield"), qc_path)
            return meta
    result = T.detect_tissue(rgb, um_per_px, tissue)
    coords = patch_grid(result.mask, scale, dims, geometry.patch_size_level0, patching.min_tissue_fraction)
    status, reason = OK, ""
    if not result.polygons:
        status, reason = (
            NO_TISSUE,
            (
                f"no tissue found (saturation threshold {result.threshold:.0f}, "
                f"min_tissue_area_um2 {tissue.min_tissue_area_um2:g})"
            ),
        )
    elif not len(coords):
        status, reason = (
            NO_TISSUE,
            (
                f"tissue found ({result.area_mm2:.3f} mm^2) but no {patching.patch_size} px "
                f"patch reaches min_tissue_fraction {patching.min_tissue_fraction}"
            ),
        )
    if status != OK:
        log.warning("slide %s: %s", slide_id, reason)
    meta.update(
        {
            "status": status,
            "reason": reason,
            "mpp": mpp_info.mean,
            "mpp_x": mpp_info.x,
            "mpp_y": mpp_info.y,
            "mpp_source": mpp_info.source,
            "dimensions": list(dims),
            "mask_mpp": float(np.mean(um_per_px)),
            "mask_shape": list(result.mask.shape),
            "scale": list(scale),
            "saturation_threshold": result.threshold,
            "tissue_mm2": round(result.area_mm2, 4),
            "n_patches_preview": len(coords),  # the grid drawn in the QC picture; `patches` recomputes it
            **result.info,
        }
    )
    write_text(json.dumps(T.tissue_geojson(result.polygons, scale, meta)), geojson_path)
    title = (
        f"{slide_id}: {status}, mpp {mpp_info.mean:.3f}, tissue {result.area_mm2:.2f} mm^2, "
        f"{len(coords)} patches of {patching.patch_size} px at {patching.target_mpp} um/px"
    )
    write_png(T.render_qc(rgb, result.polygons, coords, geometry.patch_size_level0, scale, title), qc_path)
    log.info("slide %s: %s, %.2f mm^2 tissue, %d patches in the grid", slide_id, status, result.area_mm2, len(coords))
    return meta


_CARRY = ("slide_id", "slide_path", "mpp", "mpp_x", "mpp_y", "mpp_source", "dimensions", "tissue_mm2", "tissue_params")


def run_patches(
    slide_path: str,
    slide_id: str,
    tissue_path: str | Path,
    output: str | Path,
    reading: config.SlideReading,
    patching: config.Patching,
) -> dict[str, Any]:
    """Patch coordinates from the tissue GeoJSON (rasterised at the mask's geometry, so a polygon edited
    in QuPath counts as drawn)."""
    data = T.read_tissue_geojson(tissue_path)
    meta = data["healnet"]
    attrs: dict[str, Any] = {k: meta.get(k) for k in _CARRY if k in meta}
    attrs.update(slide_id=slide_id, slide_path=str(slide_path), patching=patching.model_dump())
    attrs.setdefault("mpp", None)  # contract keys exist even for a failed slide
    attrs.setdefault("patch_size_level0", None)
    if meta.get("status") == FAILED:
        attrs.update(status=FAILED, reason=meta.get("reason", ""))
        write_patch_store(output, np.zeros((0, 2), np.int64), attrs)
        return attrs
    try:
        with Slide(slide_path) as slide:
            geometry = patch_geometry(float(meta["mpp"]), slide.level_downsamples, patching, slide_path)
            dims, level_dims = slide.dimensions, slide.level_dimensions
    except SlideError as err:
        attrs.update(_on_error(err, slide_id, reading))
        write_patch_store(output, np.zeros((0, 2), np.int64), attrs)
        return attrs
    scale = tuple(meta["scale"])
    mask = T.mask_from_polygons(T.polygons_from_geojson(data, scale), tuple(meta["mask_shape"]))
    coords = patch_grid(mask, scale, dims, geometry.patch_size_level0, patching.min_tissue_fraction)
    status, reason = (
        (OK, "") if len(coords) else (NO_TISSUE, meta.get("reason") or "no patch reaches patching.min_tissue_fraction")
    )
    if len(coords) and reading.on_corrupt_tiles != "ignore":
        tiles = check_tiles(slide_path, coords, geometry, level_dims)
        attrs.update(tiles.to_attrs())
        if tiles.corrupt and reading.on_corrupt_tiles == "fail":
            err = SlideError(
                slide_path,
                tiles.summary(),
                "re-download or re-export the slide, or set "
                "slide_reading.on_corrupt_tiles: drop to drop the patches on those tiles",
            )
            attrs.update(_on_error(err, slide_id, reading), **geometry.to_dict())
            write_patch_store(output, np.zeros((0, 2), np.int64), attrs)
            return attrs
        if tiles.corrupt:
            coords = coords[~tiles.bad_patches]
            reason = f"{int(tiles.bad_patches.sum())} patch(es) dropped: {tiles.summary()}"
            if not len(coords):
                status, reason = FAILED, f"every patch is on a corrupt tile: {tiles.summary()}"
    attrs.update(status=status, reason=reason, **geometry.to_dict())
    write_patch_store(output, coords, attrs)
    log.info(
        "slide %s: %d patches of %d px at %.3f um/px (level %d, read %d px, %d level-0 px), status %s",
        slide_id,
        len(coords),
        geometry.patch_size,
        geometry.target_mpp,
        geometry.level,
        geometry.read_size,
        geometry.patch_size_level0,
        status,
    )
    return attrs


def run_features(
    slide_path: str,
    patches_path: str | Path,
    output: str | Path,
    encoder_name: str,
    encoder_cfg: config.Encoder,
    features: config.Features,
    reading: config.SlideReading,
) -> dict[str, Any]:
    """Features of every patch into `features/{encoder}/{slide}.zarr` (empty, with the status, for a
    failed or tissue-less slide)."""
    import torch

    from healnet.wsi.encoders import autocast_dtype, build_encoder, encoder_dim, pick_device
    from healnet.wsi.extract import extract_features
    from healnet.wsi.patches import PatchGeometry

    store = read_patch_store(patches_path)
    attrs = dict(store.attrs)
    slide_id = attrs.get("slide_id", Path(patches_path).stem)
    attrs.update(
        encoder=encoder_name,
        encoder_config=encoder_cfg.model_dump(),
        torch_version=torch.__version__,
        python=platform.python_version(),
        healnet_version=__version__,
    )
    if store.status != OK or not len(store.coords):
        dim = encoder_dim(encoder_name, encoder_cfg)
        attrs.update(weights=None)
        write_feature_store(output, np.zeros((0, dim), np.float32), store.coords[:0], attrs, features.chunk_patches)
        log.info("slide %s: status %s (%s); empty %d-d feature store", slide_id, store.status, attrs.get("reason"), dim)
        return attrs
    encoder, weights = build_encoder(encoder_name, encoder_cfg)
    device = pick_device(features.device)
    amp = autocast_dtype(features.precision, device)
    geometry = PatchGeometry(**{k: attrs[k] for k in PatchGeometry.__dataclass_fields__})
    attrs.update(
        weights=weights.to_dict(),
        random_weights=weights.random,
        device=str(device),
        precision=str(amp).replace("torch.", "") if amp else "fp32",
    )
    try:
        feats, timing = extract_features(
            slide_path, store.coords, geometry, encoder, features, device, amp, desc=slide_id
        )
    except SlideError as err:
        attrs.update(_on_error(err, slide_id, reading))
        write_feature_store(
            output, np.zeros((0, encoder.feature_dim), np.float32), store.coords[:0], attrs, features.chunk_patches
        )
        return attrs
    attrs.update(timing=timing)
    write_feature_store(output, feats, store.coords, attrs, features.chunk_patches)
    return attrs
