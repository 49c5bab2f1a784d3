"""HEALNet fuses: on the planted demo signal, WSI + omics beats each modality alone.

The demo's survival depends on two independent halves, one seen only in the slides and one only in
the omics table (`healnet.demo.cohort`), so a model that fuses both can rank patients better than
any model of one half. The run is the whole pipeline (slides -> tissue -> patches -> features ->
omics, labels, splits -> training -> cindex.tsv) in one process (`run_demo`), with the shipped
config.yaml's training and model settings; only the cohort is larger than the default demo (150
patients: 30 per test fold, where 8 leave the c-index swinging by +-0.3), the slides smaller and the
encoder a small random ResNet18 to keep it to a few minutes on 2 cores.
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
    raw["demo"].update(n_patients=150, seed=0, slide_size_um=[800.0, 600.0])
    raw["encoders"]["tiny"] = {"model": "resnet18", "truncate_after": "layer2", "pretrained": False}
    raw["cohorts"]["demo"].update(encoder="tiny", models=["healnet", "healnet_wsi", "healnet_omics"])
    frame = run_demo(parse_config(raw), tmp_path_factory.mktemp("fusion"))
    return frame[frame["fold"] == "mean"].set_index("model")["cindex"]


def test_fusion_beats_each_single_modality(cindex):
    fused, wsi, omics = cindex["healnet"], cindex["healnet_wsi"], cindex["healnet_omics"]
    assert fused > 0.7, f"HEALNet (wsi + omics) mean c-index {fused:.3f}"
    assert fused > wsi + MARGIN, f"fusion {fused:.3f} vs WSI-only {wsi:.3f}"
    assert fused > omics + MARGIN, f"fusion {fused:.3f} vs omics-only {omics:.3f}"
