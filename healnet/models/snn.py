"""SNN: the omics-only baseline (self-normalising network; Klambauer et al. 2017, as used by MCAT).

x (B, F) -> 4 x [Linear, ELU, AlphaDropout(0.25)] (F -> 256 -> 256 -> 256 -> 256) -> Linear -> logits.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from healnet.models import register
from healnet.models.blocks import WSI, init_snn_, require_present, snn_stack, tabular_input, tabular_modalities


@register("snn")
class SNN(nn.Module):
    """Omics-only survival MLP; `input_dims` holds `omics` or per-type tabular modalities (concatenated)."""

    missing_modality_handling = (
        "unimodal (omics only): a sample without omics is an error (ValueError); such patients are "
        "excluded from this model rather than given an imputed vector"
    )

    def __init__(
        self,
        input_dims: dict[str, int],
        n_bins: int,
        hidden: list[int] | None = None,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if WSI in input_dims:
            raise ValueError("snn is omics-only; remove 'wsi' from this model's modalities in config `models`")
        self.tabular = tabular_modalities(input_dims)
        if not self.tabular:
            raise ValueError("snn needs a tabular modality (omics, rnaseq, cnv or mut) in its modalities")
        hidden = list(hidden or [256, 256, 256, 256])
        n_features = sum(input_dims[m] for m in self.tabular)
        self.encoder = snn_stack(n_features, hidden, dropout)  # (B, F) -> (B, hidden[-1])
        self.classifier = nn.Linear(hidden[-1], n_bins)
        init_snn_(self.classifier)

    def forward(self, batch: Mapping) -> torch.Tensor:
        x, present = tabular_input(batch, self.tabular)  # (B, F), (B,)
        require_present(present, "snn", "omics")
        return self.classifier(self.encoder(x))  # (B, n_bins)
