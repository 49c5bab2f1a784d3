"""MCAT-style genomic-guided co-attention (Chen et al. 2021, ICCV), batched with key-padding masks.

omics (B, F) -> G gene-family groups -> one SNN per group -> genomic tokens (B, G, 256)
patches (B, N, D) -> Linear(D, 256) + ReLU + Dropout -> patch tokens (B, N, 256)
co-attention: genomic tokens (queries) attend over patch tokens -> co-attended path tokens (B, G, 256)
path stream:  2-layer transformer -> gated attention pooling -> Linear + ReLU -> h_path (B, 256)
omic stream:  2-layer transformer over genomic tokens -> gated pooling -> Linear + ReLU -> h_omic (B, 256)
concat (B, 512) -> Linear(512, 256) + ReLU -> Linear(256, 256) + ReLU -> Linear to the bins.

Gene families: with `signatures` (a CSV with one column of gene symbols per family, e.g.
data/reference/signatures.csv, fetched pinned by the workflow) a family's features are the omic columns `<GENE>_mut`, `_cnv`,
`_rnaseq` of its genes (a gene may sit in several families; features in no family are unused, as in
MCAT). Without it, features are grouped by omic type (the `_<type>` suffix).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from healnet.modalities import OMIC_TYPES
from healnet.models import register
from healnet.models.blocks import (
    WSI,
    GatedAttention,
    init_xavier_,
    mlp_block,
    on_rows,
    require_any,
    snn_stack,
    tabular_input,
    tabular_modalities,
    wsi_input,
)

log = logging.getLogger(__name__)


# --- gene families ------------------------------------------------------------------------------


def tabular_feature_names(
    input_dims: Mapping[str, int], tabular: list[str], feature_names: Mapping[str, list[str]]
) -> list[str]:
    """Names of the concatenated tabular input's columns, in order.

    A modality's names are `feature_names[m]`; the single `omics` modality, when not named itself,
    is the concatenation of all `feature_names` lists in their order (the omics transform's order).
    """
    names: list[str] = []
    for m in tabular:
        if m in feature_names:
            got = list(feature_names[m])
        elif m == "omics":
            got = [n for values in feature_names.values() for n in values]
        else:
            got = []
        if len(got) != input_dims[m]:
            raise ValueError(
                f"mcat: modality {m!r} has {input_dims[m]} features but feature_names give {len(got)} names "
                f"(keys {sorted(feature_names)}); pass the omics transform's feature_names to build_model"
            )
        names += got
    return names


def read_signatures(path: str | Path) -> dict[str, list[str]]:
    """Gene families from a CSV with one column per family, gene symbols padded with blanks."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"mcat: signatures file {path} not found; set models.<name>.params.signatures to a CSV with one "
            "column of gene symbols per family (data/reference/signatures.csv: `snakemake --cores 1 data/reference/signatures.csv` fetches the pinned one), or omit it to group by omic type"
        )
    table = pd.read_csv(path, dtype=str)
    families = {str(c): [g.strip() for g in table[c].dropna() if g.strip()] for c in table.columns}
    families = {k: v for k, v in families.items() if v}
    if not families:
        raise ValueError(f"mcat: signatures file {path} lists no genes; expected one column of gene symbols per family")
    return families


def group_by_family(names: list[str], families: Mapping[str, list[str]]) -> dict[str, list[int]]:
    """Column indices per family: the family's genes with each omic suffix that exist as columns.

    A set per family, as in MCAT: genes listed twice in a family (signatures.csv has 9 such) count once.
    """
    position = {n: i for i, n in enumerate(names)}
    groups: dict[str, list[int]] = {}
    for family, genes in families.items():
        idx = sorted({position[f"{g}_{t}"] for g in genes for t in OMIC_TYPES if f"{g}_{t}" in position})
        if idx:
            groups[family] = idx
        else:
            log.warning("mcat: gene family %r matches none of the %d omic features; dropped", family, len(names))
    used = len({i for idx in groups.values() for i in idx})
    log.info(
        "mcat: %d gene families %s; %d of %d features in no family are unused",
        len(groups),
        [len(v) for v in groups.values()],
        len(names) - used,
        len(names),
    )
    return groups


def group_by_type(names: list[str]) -> dict[str, list[int]]:
    """Column indices per omic type (`_rnaseq`, `_cnv`, `_mut` suffix; anything else: `other`)."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        suffix = name.rsplit("_", 1)[-1] if "_" in name else ""
        groups.setdefault(suffix if suffix in OMIC_TYPES else "other", []).append(i)
    return groups


def omic_groups(
    input_dims: Mapping[str, int],
    tabular: list[str],
    feature_names: Mapping[str, list[str]] | None,
    signatures: str | None,
) -> dict[str, list[int]]:
    """The G token groups (name -> column indices of the concatenated tabular input)."""
    if not feature_names and signatures is None and tabular != ["omics"]:
        # per-type modalities without names: each modality is one group
        offsets = torch.tensor([0] + [input_dims[m] for m in tabular]).cumsum(0).tolist()
        return {m: list(range(offsets[i], offsets[i + 1])) for i, m in enumerate(tabular)}
    if not feature_names:
        raise ValueError(
            "mcat: grouping the omics modality into gene families or omic types needs the feature names; "
            "build the model with feature_names (build_model(..., feature_names=transform.feature_names))"
        )
    names = tabular_feature_names(input_dims, tabular, feature_names)
    groups = group_by_family(names, read_signatures(signatures)) if signatures else group_by_type(names)
    if not groups:
        raise ValueError(f"mcat: no omic feature matches any gene family of {signatures}; check the gene symbols")
    return groups


# --- model --------------------------------------------------------------------------------------


def transformer(dim: int, depth: int, heads: int, ff_dim: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, ff_dim, dropout, activation="relu", batch_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class TokenStream(nn.Module):
    """Tokens (B, G, dim) -> transformer -> gated attention pooling -> Linear + ReLU -> (B, dim)."""

    def __init__(self, dim: int, depth: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.transformer = transformer(dim, depth, heads, ff_dim, dropout)
        self.pool = GatedAttention(dim, dim, dropout)
        self.rho = mlp_block(dim, dim, dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.pool(self.transformer(tokens))  # (B, dim)
        return self.rho(pooled)


@register("mcat")
class MCAT(nn.Module):
    """Multimodal co-attention transformer over gene-family tokens and patch tokens."""

    missing_modality_handling = (
        "WSI missing: co-attention cannot run without patches, so the path stream is skipped and its "
        "pooled vector is zero: the genomic stream only. Omics missing: the genomic tokens are zero, so "
        "the co-attention queries reduce to the learned in-projection bias (a learned content-based "
        "pooling over patches) and the genomic stream's pooled vector is zero. Without wsi in "
        "input_dims (a cohort without slides) every sample takes the genomic stream only"
    )

    def __init__(
        self,
        input_dims: dict[str, int],
        n_bins: int,
        feature_names: dict[str, list[str]] | None = None,
        signatures: str | None = None,
        dim: int = 256,
        omic_hidden: list[int] | None = None,
        depth: int = 2,
        heads: int = 8,
        ff_dim: int = 512,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.tabular = tabular_modalities(input_dims)
        if not self.tabular:
            raise ValueError(
                f"mcat needs omics: its genomic tokens are the co-attention queries; got modalities {sorted(input_dims)}"
            )
        omic_hidden = list(omic_hidden or [dim, dim])
        if omic_hidden[-1] != dim:
            raise ValueError(f"mcat: omic_hidden must end with dim={dim}, got {omic_hidden}")
        groups = omic_groups(input_dims, self.tabular, feature_names, signatures)
        self.group_names = list(groups)
        for i, idx in enumerate(groups.values()):
            self.register_buffer(f"group{i}", torch.tensor(idx, dtype=torch.long), persistent=False)
        self.sig_networks = nn.ModuleList(snn_stack(len(idx), omic_hidden, dropout) for idx in groups.values())
        self.has_wsi = WSI in input_dims
        if self.has_wsi:
            self.wsi_net = mlp_block(input_dims[WSI], dim, dropout)
            self.coattn = nn.MultiheadAttention(dim, num_heads=1, batch_first=True)
            self.path_stream = TokenStream(dim, depth, heads, ff_dim, dropout)
            init_xavier_(self.wsi_net)
        self.omic_stream = TokenStream(dim, depth, heads, ff_dim, dropout)
        self.mm = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        self.classifier = nn.Linear(dim, n_bins)
        self.dim = dim
        self.last_coattention: torch.Tensor | None = None  # (B_wsi, G, N) of the last forward

    def forward(self, batch: Mapping) -> torch.Tensor:
        x_omic, has_omic = tabular_input(batch, self.tabular)  # (B, F), (B,)
        g = len(self.sig_networks)
        genomic = on_rows(has_omic, self._genomic_tokens, x_omic, out_dim=(g, self.dim))  # (B, G, dim)
        if self.has_wsi:
            bags, mask, has_path = wsi_input(batch)  # (B, N, D), (B, N), (B,)
            require_any(has_path, has_omic)
            h_path = on_rows(has_path, self._path, genomic, bags, mask, out_dim=self.dim)  # (B, dim)
        else:
            require_any(has_omic)
            h_path = x_omic.new_zeros(x_omic.shape[0], self.dim)
        h_omic = on_rows(has_omic, self.omic_stream, genomic, out_dim=self.dim)  # (B, dim)
        return self.classifier(self.mm(torch.cat([h_path, h_omic], dim=1)))  # (B, n_bins)

    def _genomic_tokens(self, x: torch.Tensor) -> torch.Tensor:
        groups = [getattr(self, f"group{i}") for i in range(len(self.sig_networks))]
        return torch.stack([net(x[:, idx]) for net, idx in zip(self.sig_networks, groups)], dim=1)  # (B, G, dim)

    def _path(self, genomic: torch.Tensor, bags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        patches = self.wsi_net(bags)  # (B, N, dim)
        coattended, weights = self.coattn(genomic, patches, patches, key_padding_mask=~mask)  # (B, G, dim)
        self.last_coattention = weights.detach()  # (B, G, N)
        return self.path_stream(coattended)  # (B, dim)
