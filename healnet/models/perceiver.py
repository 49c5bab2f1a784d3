"""Perceiver early fusion (Jaegle et al. 2021): one Perceiver over the concatenation of all
modalities' tokens, the paper's early-fusion baseline.

tokens: one per patch, Linear(D, token_dim)(patch) + e_wsi                            (B, N, token_dim)
        one per omic feature j, x_j * w_j + p_j + e_m (value scaled by a learned vector plus a learned
        feature-identity encoding p_j and the modality's encoding e_m)                  (B, F, token_dim)
concat  (B, N + F, token_dim), key mask = real patches of present WSI | features of present omics
latents S (L, latent_dim) -> depth x [cross-attention S <- tokens, self_per_cross x latent self-attention]
head: mean over latents -> LayerNorm -> Linear to the bins.

Patches are a set: their only positional encoding is the modality's (the batch carries no coordinates).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from healnet.models import register
from healnet.models.attention import Attention, FeedForward
from healnet.models.blocks import WSI, present_of, require_any, wsi_input
from healnet.models.healnet import TabularTokens


class ModalityTokens(nn.Module):
    """One modality's inputs -> tokens (B, n, token_dim) plus that modality's learned encoding e_m.

    WSI: Linear(D, token_dim) per patch; tabular: x_j * w_j + p_j per feature (HEALNet's learned
    feature-identity tokens).
    """

    def __init__(self, modality: str, in_dim: int, token_dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, token_dim) if modality == WSI else TabularTokens(in_dim, token_dim, "learned")
        self.modality = nn.Parameter(torch.randn(token_dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x) + self.modality  # (B, n, token_dim)


class PerceiverLayer(nn.Module):
    """Latents read all tokens once (cross-attention + FF), then `self_per_cross` self-attention blocks."""

    def __init__(
        self,
        latent_dim: int,
        token_dim: int,
        cross_heads: int,
        latent_heads: int,
        dim_head: int,
        self_per_cross: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.cross = Attention(latent_dim, token_dim, heads=cross_heads, dim_head=dim_head, dropout=dropout)
        self.cross_ff = FeedForward(latent_dim, dropout=dropout)
        self.latent = nn.ModuleList(
            Attention(latent_dim, heads=latent_heads, dim_head=dim_head, dropout=dropout) for _ in range(self_per_cross)
        )
        self.latent_ff = nn.ModuleList(FeedForward(latent_dim, dropout=dropout) for _ in range(self_per_cross))

    def forward(self, s: torch.Tensor, tokens: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        s = s + self.cross(s, tokens, key_mask)[0]  # (B, L, latent_dim)
        s = s + self.cross_ff(s)
        for attn, ff in zip(self.latent, self.latent_ff):
            s = s + attn(s)[0]
            s = s + ff(s)
        return s


@register("perceiver")
class Perceiver(nn.Module):
    """Early fusion: a single Perceiver reads every modality's tokens at once."""

    missing_modality_handling = (
        "early fusion with masking: an absent modality's tokens are masked out of the concatenated "
        "token sequence (key-padding mask), so the latents attend only to present modalities' tokens"
    )

    def __init__(
        self,
        input_dims: dict[str, int],
        n_bins: int,
        depth: int = 2,
        num_latents: int = 32,
        latent_dim: int = 128,
        token_dim: int = 64,
        cross_heads: int = 1,
        latent_heads: int = 4,
        dim_head: int = 32,
        self_per_cross: int = 1,
        dropout: float = 0.1,
        share_weights: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"perceiver: depth must be >= 1, got {depth}")
        self.modalities = list(input_dims)
        self.tokenizers = nn.ModuleDict({m: ModalityTokens(m, d, token_dim) for m, d in input_dims.items()})
        self.latents = nn.Parameter(torch.randn(num_latents, latent_dim))
        # share_weights: the first layer has its own weights, all later layers reuse one set
        n_distinct = min(depth, 2) if share_weights else depth
        self.layers = nn.ModuleList(
            PerceiverLayer(latent_dim, token_dim, cross_heads, latent_heads, dim_head, self_per_cross, dropout)
            for _ in range(n_distinct)
        )
        self.order = [min(i, n_distinct - 1) for i in range(depth)]
        self.head = nn.Sequential(nn.LayerNorm(latent_dim), nn.Linear(latent_dim, n_bins))

    def forward(self, batch: Mapping) -> torch.Tensor:
        tokens, masks, presents = [], [], []
        for m in self.modalities:
            if m == WSI:
                x, mask, present = wsi_input(batch)  # (B, N, D), (B, N), (B,)
            else:
                if m not in batch or batch[m].dim() != 2:
                    raise ValueError(f"perceiver: batch[{m!r}] must be a (B, F) tensor")
                x = batch[m]
                present = present_of(batch, m, x.shape[0], x.device)
                mask = torch.ones(x.shape, dtype=torch.bool, device=x.device)
            # absent samples: zero inputs (never attended) so NaN placeholders cannot leak into gradients
            x = torch.where(present.view(-1, *[1] * (x.dim() - 1)), x, 0.0)
            tokens.append(self.tokenizers[m](x))
            masks.append(mask & present[:, None])
            presents.append(present)
        require_any(*presents)
        tokens_all = torch.cat(tokens, dim=1)  # (B, N + F, token_dim)
        key_mask = torch.cat(masks, dim=1)  # (B, N + F)
        s = self.latents.expand(tokens_all.shape[0], -1, -1)  # (B, L, latent_dim)
        for i in self.order:
            s = self.layers[i](s, tokens_all, key_mask)
        return self.head(s.mean(dim=1))  # (B, n_bins)
