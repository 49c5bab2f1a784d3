"""HEALNet's omics tokenisations (healnet/models/omics_tokens.py): token counts, groups, gradients."""

from __future__ import annotations

import pytest
import torch

from healnet.models import build_model
from healnet.models.omics_tokens import GroupTokens, feature_groups

NAMES = ["TP53_mut", "TP53_cnv", "EGFR_rnaseq", "MYC_rnaseq", "ZZZ_rnaseq", "EGFR_mut"]


def test_family_groups_follow_the_signatures_and_keep_the_rest(tmp_path):
    sig = tmp_path / "sig.csv"
    sig.write_text("Tumor Suppressors,Oncogenes\nTP53,EGFR\n,MYC\n")
    groups = feature_groups("omics", len(NAMES), {"omics": NAMES}, str(sig))
    assert groups == {"Tumor Suppressors": [0, 1], "Oncogenes": [2, 3, 5], "other": [4]}
    by_type = feature_groups("omics", len(NAMES), {"omics": NAMES}, None)
    assert by_type == {"mut": [0, 5], "cnv": [1], "rnaseq": [2, 3, 4]}
    with pytest.raises(ValueError, match="6 features but 2 feature names"):
        feature_groups("omics", 6, {"omics": NAMES[:2]}, None)


def test_group_tokens_see_only_their_features():
    tok = GroupTokens({"a": [0, 1], "b": [2]}, dim=4, tokens_per_group=2)
    x = torch.randn(3, 3, requires_grad=True)
    out = tok(x)
    assert out.shape == (3, 4, 4)  # 2 groups x 2 tokens
    out[:, :2].sum().backward()  # group a's tokens
    assert x.grad[:, 2].abs().sum() == 0 and x.grad[:, :2].abs().sum() > 0


@pytest.mark.parametrize("tokens, n_tokens", [("feature", 6), ("modality", 1), ("family", 6)])
def test_healnet_token_counts(tokens, n_tokens):
    torch.manual_seed(0)
    model = build_model(
        "healnet",
        {"omics": 6, "clinical": 2},
        4,
        {"depth": 1, "num_latents": 4, "latent_dim": 16, "omics_tokens": tokens},
        {"omics": NAMES, "clinical": ["age_clinical", "is_female_clinical"]},
    )
    batch = {"omics": torch.randn(5, 6), "clinical": torch.randn(5, 2)}
    logits, attn = model(batch, return_attention=True)
    assert logits.shape == (5, 4)
    assert attn["omics"][0].shape == (5, n_tokens)  # family: 3 type groups x 2 tokens
    assert attn["clinical"][0].shape == (5, 2)  # age and sex keep one token each
    with pytest.raises(ValueError, match="omics_tokens must be one of"):
        build_model("healnet", {"omics": 6}, 4, {"omics_tokens": "gene"}, {"omics": NAMES})
