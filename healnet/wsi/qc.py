"""The per-cohort slide table `results/{cohort}/qc/slides.tsv`: one row per slide of the sample sheet."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from healnet.sheets import read_sample_sheet
from healnet.wsi.store import FAILED, read_store_attrs

log = logging.getLogger(__name__)

COLUMNS = ["slide_id", "case_id", "status", "reason", "mpp", "tissue_mm2", "n_patches", "corrupt_tiles"]


def slides_table(sheet_path: str | Path, stores: list[str | Path]) -> pd.DataFrame:
    """Status, reason, mpp, tissue area, patch count and corrupt tiles of every slide, from its feature
    store attrs."""
    sheet = read_sample_sheet(sheet_path, check_files=False)
    by_id = {Path(p).name.removesuffix(".zarr"): Path(p) for p in stores}
    missing = [s for s in sheet["slide_id"] if s not in by_id]
    if missing:
        raise FileNotFoundError(
            f"slides QC for {sheet_path}: no feature store for slide(s) {missing[:10]}; "
            "run the features rule for them (the stores are named <slide_id>.zarr)"
        )
    rows = []
    for slide_id, case_id in zip(sheet["slide_id"], sheet["case_id"]):
        attrs = read_store_attrs(by_id[slide_id])
        rows.append(
            {
                "slide_id": slide_id,
                "case_id": case_id,
                "status": attrs.get("status"),
                "reason": attrs.get("reason") or "",
                "mpp": attrs.get("mpp"),
                "tissue_mm2": attrs.get("tissue_mm2"),
                "n_patches": int(attrs.get("n_patches") or 0),
                "corrupt_tiles": int(attrs.get("corrupt_tiles") or 0),  # their boxes: the store's attrs
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    counts = table["status"].value_counts().to_dict()
    log.info("%d slides: %s; %d patches in all", len(table), counts, int(table["n_patches"].sum()))
    for row in table[table["status"] == FAILED].itertuples():
        log.warning("failed slide %s (case %s): %s", row.slide_id, row.case_id, row.reason)
    return table
