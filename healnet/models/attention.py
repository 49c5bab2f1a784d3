"""Attention blocks shared by HEALNet and the attention baselines.

Shapes: latents/queries x (B, L, d); context (B, N, c); key-padding mask (B, N), True = real token.
Attention runs through `F.scaled_dot_product_attention`: with queries = the L latents its memory is
O(B * heads * L * N), linear in the number of tokens (patches); nothing N x N is ever formed.
The explicit path (`return_attention=True`) computes the same softmax by hand to hand back the
weights, mean over heads and queries, one score per token.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def lecun_normal_(linear: nn.Linear) -> None:
    """SELU networks need weights ~ N(0, 1/fan_in) to stay self-normalising (Klambauer et al. 2017)."""
    nn.init.normal_(linear.weight, std=1.0 / math.sqrt(linear.in_features))
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class FeedForward(nn.Module):
    """Pre-norm position-wise MLP: LN -> Linear(d, d*mult) -> act -> dropout -> Linear(d*mult, d).

    `snn=True`: SELU + AlphaDropout with LeCun-normal weights (a self-normalising network, as in the
    paper's SNN option); otherwise GELU + Dropout.
    """

    def __init__(self, dim: int, mult: int = 2, dropout: float = 0.0, snn: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        hidden = dim * mult
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.SELU() if snn else nn.GELU()
        self.drop = nn.AlphaDropout(dropout) if snn else nn.Dropout(dropout)
        if snn:
            lecun_normal_(self.fc1)
            lecun_normal_(self.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))


class Attention(nn.Module):
    """Pre-norm multi-head (cross-)attention; self-attention when `context` is None.

    `temperature` divides the logits (the reference code's 0.5 sharpens the softmax; default 1 is
    standard scaled dot-product). `out_activation` adds the reference code's LeakyReLU after the
    output projection; off by default.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 4,
        dim_head: int = 16,
        dropout: float = 0.0,
        temperature: float = 1.0,
        out_activation: bool = False,
    ):
        super().__init__()
        cross = context_dim is not None
        context_dim = context_dim or query_dim
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5 / temperature
        self.dropout = dropout
        self.norm = nn.LayerNorm(query_dim)
        # Self-attention reuses the normed queries as context; cross-attention norms its own inputs.
        self.norm_context = nn.LayerNorm(context_dim) if cross else nn.Identity()
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)
        self.out_act = nn.LeakyReLU() if out_activation else nn.Identity()
        self.out_drop = nn.Dropout(dropout)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape  # (B, n, H*dh) -> (B, H, n, dh)
        return t.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, L, d), context (B, N, c), mask (B, N) -> (update (B, L, d), weights (B, N) or None)."""
        xn = self.norm(x)
        ctx = xn if context is None else self.norm_context(context)
        q = self._heads(self.to_q(xn))  # (B, H, L, dh)
        k, v = (self._heads(t) for t in self.to_kv(ctx).chunk(2, dim=-1))  # (B, H, N, dh) each
        p = self.dropout if self.training else 0.0
        weights = None
        if return_attention:
            logits = torch.einsum("bhld,bhnd->bhln", q, k) * self.scale  # (B, H, L, N)
            if mask is not None:
                logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
            attn = logits.softmax(dim=-1)
            weights = attn.mean(dim=(1, 2))  # (B, N): mean over heads and queries
            out = torch.einsum("bhln,bhnd->bhld", F.dropout(attn, p, self.training), v)
        else:
            attn_mask = None if mask is None else mask[:, None, None, :]  # broadcast over H, L
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, scale=self.scale)
        b, h, l, dh = out.shape
        out = out.transpose(1, 2).reshape(b, l, h * dh)  # (B, L, H*dh)
        return self.out_drop(self.out_act(self.to_out(out))), weights
