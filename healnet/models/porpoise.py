"""Porpoise-style late fusion (Chen et al. 2022, PORPOISE `PorpoiseMMF`): an ABMIL path branch and
an SNN omics branch, fused by a gated Kronecker product (PathomicFusion's bilinear fusion).

path bag (B, N, D) -> ABMIL branch -> h_path (B, 256)       omics (B, F) -> 2 SNN blocks -> h_omic (B, 256)
each gated to 32-d: o = FC(sigmoid(Linear([h_path, h_omic])) * ReLU(Linear(h)))             (B, 32)
Kronecker product [o_path, 1] x [o_omic, 1] -> (B, 33 * 33) -> dropout -> Linear(1089, 256) + ReLU
skip: concat with the raw embeddings h_path, h_omic -> Linear(768, 256) + ReLU -> Linear to the bins.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from healnet.models import register
from healnet.models.abmil import ABMILBranch
from healnet.models.blocks import (
    WSI,
    batch_size,
    on_rows,
    require_any,
    snn_stack,
    tabular_input,
    tabular_modalities,
    wsi_input,
)


def append_one(o: torch.Tensor) -> torch.Tensor:
    """[o, 1]: (B, d) -> (B, d + 1); the 1 keeps each modality's unimodal terms in the product."""
    return torch.cat([o, o.new_ones(o.shape[0], 1)], dim=1)


class GatedUnit(nn.Module):
    """One modality's gated, down-scaled embedding: o = FC(sigmoid(W_z [h, h_other]) * ReLU(W_h h))."""

    def __init__(self, dim: int, other_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.h = nn.Sequential(nn.Linear(dim, out_dim), nn.ReLU())
        self.z = nn.Linear(dim + other_dim, out_dim)
        self.o = nn.Sequential(nn.Linear(out_dim, out_dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, h: torch.Tensor, h_other: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.z(torch.cat([h, h_other], dim=1)))  # (B, out_dim)
        return self.o(gate * self.h(h))  # (B, out_dim)


class KroneckerFusion(nn.Module):
    """Gated Kronecker fusion with skip connection; an absent modality enters as [0, ..., 0, 1]."""

    def __init__(self, dim: int = 256, scale: int = 8, hidden: int = 256, dropout: float = 0.25) -> None:
        super().__init__()
        small = dim // scale  # 32
        self.gate_path = GatedUnit(dim, dim, small, dropout)
        self.gate_omic = GatedUnit(dim, dim, small, dropout)
        self.dropout = nn.Dropout(dropout)
        self.encoder1 = nn.Sequential(nn.Linear((small + 1) ** 2, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.encoder2 = nn.Sequential(nn.Linear(hidden + 2 * dim, hidden), nn.ReLU(), nn.Dropout(dropout))

    def forward(
        self, h_path: torch.Tensor, h_omic: torch.Tensor, has_path: torch.Tensor, has_omic: torch.Tensor
    ) -> torch.Tensor:
        # h_*: (B, dim), zero rows where the modality is absent
        o_path = torch.where(has_path[:, None], self.gate_path(h_path, h_omic), 0.0)  # (B, 32)
        o_omic = torch.where(has_omic[:, None], self.gate_omic(h_omic, h_path), 0.0)  # (B, 32)
        kron = torch.einsum("bi,bj->bij", append_one(o_path), append_one(o_omic)).flatten(1)  # (B, 33*33)
        out = self.encoder1(self.dropout(kron))  # (B, hidden)
        return self.encoder2(torch.cat([out, h_path, h_omic], dim=1))  # (B, hidden)


@register("porpoise")
class Porpoise(nn.Module):
    """Late fusion of an ABMIL slide embedding and an SNN omics embedding."""

    missing_modality_handling = (
        "late fusion with the constant-1 path: an absent modality's gated vector is zero, so its "
        "factor in the Kronecker product is [0, ..., 0, 1] and only the present modality's unimodal "
        "terms (and the constant) remain; its raw embedding in the skip connection and in the other "
        "gate is zero; the absent branch is never run on placeholder input. A modality missing from "
        "the whole cohort (not in input_dims) is absent for every sample"
    )

    def __init__(
        self,
        input_dims: dict[str, int],
        n_bins: int,
        embed_dim: int = 256,
        path_dim: int = 512,
        attn_dim: int = 256,
        omic_hidden: list[int] | None = None,
        scale: int = 8,
        dropout: float = 0.25,
        dropinput: float = 0.10,
    ) -> None:
        super().__init__()
        self.tabular = tabular_modalities(input_dims)
        self.modalities = list(input_dims)
        if not input_dims:
            raise ValueError("porpoise needs wsi and/or omics modalities, got none")
        omic_hidden = list(omic_hidden or [embed_dim, embed_dim])
        if omic_hidden[-1] != embed_dim:
            raise ValueError(f"porpoise: omic_hidden must end with embed_dim={embed_dim}, got {omic_hidden}")
        self.input_dropout = nn.Dropout(dropinput)  # PORPOISE drops input patch features (default 0.10)
        self.path = ABMILBranch(input_dims[WSI], path_dim, attn_dim, embed_dim, dropout) if WSI in input_dims else None
        n_omic = sum(input_dims[m] for m in self.tabular)
        self.omic = snn_stack(n_omic, omic_hidden, dropout) if self.tabular else None
        self.fusion = KroneckerFusion(embed_dim, scale, embed_dim, dropout)
        self.embed_dim = embed_dim
        self.classifier = nn.Linear(embed_dim, n_bins)

    def forward(self, batch: Mapping) -> torch.Tensor:
        b, device = batch_size(batch, self.modalities)
        h_path, has_path = self._path_embedding(batch, b, device)  # (B, 256), (B,)
        h_omic, has_omic = self._omic_embedding(batch, b, device)  # (B, 256), (B,)
        require_any(has_path, has_omic)
        return self.classifier(self.fusion(h_path, h_omic, has_path, has_omic))  # (B, n_bins)

    def _path_embedding(self, batch: Mapping, b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.path is None:
            return torch.zeros(b, self.embed_dim, device=device), torch.zeros(b, dtype=torch.bool, device=device)
        bags, mask, has_path = wsi_input(batch)  # (B, N, D), (B, N), (B,)
        return on_rows(has_path, self._path, bags, mask, out_dim=self.embed_dim), has_path

    def _omic_embedding(self, batch: Mapping, b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.omic is None:
            return torch.zeros(b, self.embed_dim, device=device), torch.zeros(b, dtype=torch.bool, device=device)
        x_omic, has_omic = tabular_input(batch, self.tabular)  # (B, F), (B,)
        return on_rows(has_omic, self.omic, x_omic, out_dim=self.embed_dim), has_omic

    def _path(self, bags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.path(self.input_dropout(bags), mask)
