"""How HEALNet turns a tabular omics vector into the tokens its cross-attention reads.

HEALNet's cross-attention pools the latents over a modality's tokens. How many tokens an omics
vector of ~2,000 features becomes decides how much the model must learn from a few hundred patients
(32-104 training events per fold on TCGA), so it is a choice (`HEALNet(omics_tokens=...)`):

- `feature`: one token per feature, value x learned embedding + learned feature identity
  (`healnet.models.healnet.TabularTokens`; the paper's description). ~2,000 tokens and 2 x F x
  token_dim parameters; pair it with the L1 term (`training.l1`) for sparsity.
- `modality`: the whole vector as a single token of dimension F, as the authors' code does; the
  cross-attention's key/value projection is then a linear layer over all features.
- `family`: `tokens_per_group` tokens per gene family (MCAT's grouping: a family's genes with each
  omic suffix, from a signatures CSV such as data/reference/signatures.csv, fetched pinned by the workflow), plus one group
  `other` of the features in no family, so nothing is thrown away. Each group is projected by its
  own linear layer. Without `signatures`, groups are the omic types (`_rnaseq`, `_cnv`, `_mut`).

The choice is made on training folds only (bench/omics_models.py, bench/README.md).
The `clinical` modality (age, sex) always keeps one token per feature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn as nn

TOKENISATIONS = ("feature", "modality", "family")


class ModalityToken(nn.Module):
    """(B, F) -> (B, 1, F): the whole vector as one token (the authors' code)."""

    def __init__(self, n_features: int):
        super().__init__()
        self.out_dim = n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1)


class GroupTokens(nn.Module):
    """(B, F) -> (B, G * k, dim): k tokens per feature group, each group through its own Linear."""

    def __init__(self, groups: Mapping[str, list[int]], dim: int, tokens_per_group: int = 2):
        super().__init__()
        self.group_names = list(groups)
        self.k, self.out_dim = tokens_per_group, dim
        for i, idx in enumerate(groups.values()):
            self.register_buffer(f"group{i}", torch.tensor(idx, dtype=torch.long), persistent=False)
        self.proj = nn.ModuleList(nn.Linear(len(idx), tokens_per_group * dim) for idx in groups.values())
        bound = 1.0 / math.sqrt(dim)
        self.identity = nn.Parameter(torch.empty(len(groups) * tokens_per_group, dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [proj(x[:, getattr(self, f"group{i}")]) for i, proj in enumerate(self.proj)]  # G x (B, k * dim)
        tokens = torch.cat(parts, dim=1).view(x.shape[0], -1, self.out_dim)  # (B, G * k, dim)
        return tokens + self.identity


def feature_groups(
    modality: str, n_features: int, feature_names: Mapping[str, list[str]] | None, signatures: str | None
) -> dict[str, list[int]]:
    """Gene-family (or omic-type) groups of one modality's columns, plus `other` for the rest."""
    from healnet.models.mcat import group_by_family, group_by_type, read_signatures

    names = list((feature_names or {}).get(modality, []))
    if len(names) != n_features:
        raise ValueError(
            f"HEALNet omics_tokens='family': modality {modality!r} has {n_features} features but "
            f"{len(names)} feature names; build the model with the omics transform's feature_names"
        )
    groups = group_by_family(names, read_signatures(signatures)) if signatures else group_by_type(names)
    used = {i for idx in groups.values() for i in idx}
    rest = [i for i in range(n_features) if i not in used]
    if rest:
        groups["other"] = rest
    return groups


def omics_tokenizer(
    kind: str,
    modality: str,
    n_features: int,
    token_dim: int,
    feature_names: Mapping[str, list[str]] | None = None,
    signatures: str | None = None,
    tokens_per_group: int = 2,
) -> nn.Module:
    """The `modality` or `family` tokenizer of one tabular modality (`feature` stays in healnet.py)."""
    if kind == "modality":
        return ModalityToken(n_features)
    if kind == "family":
        return GroupTokens(feature_groups(modality, n_features, feature_names, signatures), token_dim, tokens_per_group)
    raise ValueError(f"HEALNet: omics_tokens must be one of {TOKENISATIONS}, got {kind!r}")
