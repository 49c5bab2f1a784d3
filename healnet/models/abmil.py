"""ABMIL: the WSI-only baseline, gated attention multiple-instance learning (Ilse et al. 2018),
in the configuration of MCAT/PORPOISE's AMIL survival model.

patches (B, N, D) -> Linear(D, 512) + ReLU + Dropout -> gated attention (tanh, sigmoid branches to
256, product, Linear to 1) -> softmax over real patches -> weighted sum (B, 512) ->
Linear(512, 256) + ReLU + Dropout -> Linear to the bins.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from healnet.models import register
from healnet.models.blocks import WSI, GatedAttention, init_xavier_, mlp_block, require_present, wsi_input


class ABMILBranch(nn.Module):
    """Patch bag -> one slide embedding (B, out_dim); also the path branch of Porpoise."""

    def __init__(self, in_dim: int, dim: int = 512, attn_dim: int = 256, out_dim: int = 256, dropout: float = 0.25):
        super().__init__()
        self.fc = mlp_block(in_dim, dim, dropout)
        self.attention = GatedAttention(dim, attn_dim, dropout)
        self.rho = mlp_block(dim, out_dim, dropout)
        self.out_dim = out_dim
        self.last_attention: torch.Tensor | None = None  # (B, N) weights of the last forward
        init_xavier_(self)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)  # (B, N, dim)
        pooled, weights = self.attention(h, mask)  # (B, dim), (B, N)
        self.last_attention = weights.detach()
        return self.rho(pooled)  # (B, out_dim)


@register("abmil")
class ABMIL(nn.Module):
    """WSI-only survival model: ABMIL branch + Linear to the bins."""

    missing_modality_handling = (
        "unimodal (WSI only): a sample without WSI patches is an error (ValueError); such patients "
        "are excluded from this model"
    )

    def __init__(
        self,
        input_dims: dict[str, int],
        n_bins: int,
        dim: int = 512,
        attn_dim: int = 256,
        out_dim: int = 256,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if set(input_dims) != {WSI}:
            raise ValueError(f"abmil is WSI-only; its modalities must be [wsi], got {sorted(input_dims)}")
        self.branch = ABMILBranch(input_dims[WSI], dim, attn_dim, out_dim, dropout)
        self.classifier = nn.Linear(out_dim, n_bins)
        init_xavier_(self.classifier)

    def forward(self, batch: Mapping) -> torch.Tensor:
        x, mask, present = wsi_input(batch)  # (B, N, D), (B, N), (B,)
        require_present(present, "abmil", "wsi")
        return self.classifier(self.branch(x, mask))  # (B, n_bins)
