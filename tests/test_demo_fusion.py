"""HEALNet fuses: on the planted demo signal, WSI + omics beats each modality alone.

The demo's survival depends on two independent halves, one seen only in the slides and one only in
the omics table (`healnet.demo.cohort`), so a model that fuses both can rank patients better than
any model of one half. The run is the whole pipeline (slides -> tissue -> patches -> features ->
omics, labels, splits -> training -> cindex.tsv) in one process (`run_demo`) with the shipped
config.yaml as it is: the demo that `make demo` runs (150 patients, 30 per test fold, where 8 left
the c-index swinging by +-0.3; small slides and a small random ResNet18 encoder so it takes minutes
on 2 cores).
"""

from __future__ import annotations

import pytest
import yaml

from healnet.config import parse_config

pytestmark = pytest.mark.slow

MARGIN = 0.02  # fusion over the better unimodal model, in mean c-index over the 5 folds


@pytest.fixture(scope="module")
def cindex(repo, tmp_path_factory):
    from healnet.demo.inprocess import run_demo

    raw = yaml.safe_load((repo / "config.yaml").read_text())
    assert raw["demo"]["n_patients"] == 150 and raw["cohorts"]["demo"]["models"] == [
        "healnet",
        "healnet_wsi",
        "healnet_omics",
    ]
    frame = run_demo(parse_config(raw), tmp_path_factory.mktemp("fusion"))
    return frame[frame["fold"] == "mean"].set_index("model")["cindex"]


def test_fusion_beats_each_single_modality(cindex):
    fused, wsi, omics = cindex["healnet"], cindex["healnet_wsi"], cindex["healnet_omics"]
    assert fused > 0.7, f"HEALNet (wsi + omics) mean c-index {fused:.3f}"
    assert fused > wsi + MARGIN, f"fusion {fused:.3f} vs WSI-only {wsi:.3f}"
    assert fused > omics + MARGIN, f"fusion {fused:.3f} vs omics-only {omics:.3f}"
