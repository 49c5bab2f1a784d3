"""Attention blocks shared by HEALNet and the attention baselines.

Shapes: latents/queries x (B, L, d); context (B, N, c); key-padding mask (B, N), True = real token.
Attention runs through `F.scaled_dot_product_attention`: with queries = the L latents its memory is
O(B * heads * L * N), linear in the number of tokens (patches); nothing N x N is ever formed.
The explicit path (`return_attention=True`) computes the same softmax by hand to hand back the
weights, mean over heads and queries, one score per token.

Large contexts (a bag of 10^4-10^5 patches) are expensive only where they are touched row by row:
the context LayerNorm and the key/value projection. `normed_linears` computes LayerNorm + Linear
without materialising the normed copy of the context, and `Attention.folded_kv` folds the
LayerNorm's affine into the key and value weights, so a model can norm the context once for all
its layers (`forward(..., kv=(k, v))`) with the math unchanged.
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


def normed_linears(
    x: torch.Tensor, params: list[tuple[torch.Tensor, torch.Tensor | None]], eps: float = 1e-5
) -> list[torch.Tensor]:
    """[F.linear(F.layer_norm(x, (D,), eps=eps), W, b) for W, b in params], x (..., D), W (K, D).

    The LayerNorm is done once for all products, and each product is its own matmul (slicing one
    wide product would cost a concatenation of the gradients in backward). When the normed copy of
    x would be the largest tensor (D > sum of K: a bag of 1024-d patch features projected to a few
    keys/values), it is never formed: LN(x) W^T = (x W^T - mean * W 1) * rstd with var = E[x^2] -
    mean^2 from a sum and a vector norm (~20x faster on CPU than `var_mean`), and when x needs no
    gradient backward is one weight-gradient product per W, no LayerNorm or input gradients.
    Equal to the unfused form up to float rounding; rows whose mean is large against their spread
    (where both subtractions would cancel) take the unfused form.
    """
    d = x.shape[-1]
    fused = d > sum(w.shape[0] for w, _ in params)
    if fused:
        mean = x.sum(dim=-1, keepdim=True) / d  # (..., 1)
        var = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square() / d - mean.square()
        fused = not bool((mean.square() > 100 * var).any())  # beyond: relative error above ~1e-4
    if not fused:
        xn = F.layer_norm(x, (d,), eps=eps)
        return [F.linear(xn, w, b) for w, b in params]
    rstd = torch.rsqrt(var.clamp_min(0) + eps)
    outs = []
    for w, b in params:
        out = (x @ w.T - mean * w.sum(dim=1)) * rstd  # (..., K)
        outs.append(out if b is None else out + b)
    return outs


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

    def folded_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention's key and value maps with norm_context's affine folded in:
        [(W_k, b_k), (W_v, b_v)], each W (H*dh, c), for `normed_linears(context, ...)`.

        to_kv(LN(c)) = standardise(c) (W diag(gamma))^T + W beta.
        """
        if not isinstance(self.norm_context, nn.LayerNorm):
            raise ValueError("folded_kv is for cross-attention (self-attention has no context LayerNorm)")
        w, ln = self.to_kv.weight, self.norm_context
        return list(zip((w * ln.weight).chunk(2), (w @ ln.bias).chunk(2)))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_attention: bool = False,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, L, d), context (B, N, c), mask (B, N) -> (update (B, L, d), weights (B, N) or None).

        `kv`: this layer's keys and values (B, N, H*dh) each, i.e. to_kv(norm_context(context)),
        computed by the caller (see `folded_kv`); `context` is then not used.
        """
        xn = self.norm(x)
        if kv is None:
            kv = self.to_kv(xn if context is None else self.norm_context(context)).chunk(2, dim=-1)
        q = self._heads(self.to_q(xn))  # (B, H, L, dh)
        k, v = (self._heads(t) for t in kv)  # (B, H, N, dh) each
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
        b, h, n_q, dh = out.shape
        out = out.transpose(1, 2).reshape(b, n_q, h * dh)  # (B, L, H*dh)
        return self.out_drop(self.out_act(self.to_out(out))), weights
