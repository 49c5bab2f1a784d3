"""HEALNet: hybrid early-fusion attention learning (Hemker et al., 2024), with per-sample missing
modalities.

A learned latent array S (num_latents x latent_dim) is shared across modalities. Each fusion layer
updates S once per modality, in order, with that modality's cross-attention (query = S, keys/values =
the modality's tokens) and feed-forward, then runs `self_per_cross_attn` latent self-attention blocks.
All blocks are pre-norm with residuals. With `share_weights`, layers 2..depth all reuse the second
layer's weights (the paper's sharing after the first layer), so weights are shared only from depth 3
on; at the default depth 2 each layer has its own.
The head reads S: mean over latents -> LayerNorm -> Linear to the survival bins (logits).

Tokens (one per input element, as in the paper, not the reference code's single omic token):
- WSI: one token per patch, with a key-padding mask. `wsi_token_dim=None` (default): the raw
  D-dim features are the tokens, each layer norming and projecting them with its own weights;
  `wsi_token_dim=t`: the patch feature is layer-normed and projected to t once per forward and
  every layer attends to these shared tokens (1.5-2.3x faster again at 10^4-10^5 patches, but
  0.014-0.017 lower fusion c-index on the 150-patient demo at t=64, so not the default). Either
  way the work that does not depend on the latents is done once per forward, not per layer: the
  tokens are normed once and
  each layer's keys and values come from its LayerNorm affine folded into its key/value weights
  (`attention.normed_linears`, the math unchanged); a 1024-d bag is never normed into a copy.
  Cost and memory against the original form: bench/README.md (`bench/bench_healnet.py`).
- tabular (omics, rnaseq, cnv, mut, clinical): by default one token per feature (`omics_tokens`:
  also one token per modality or a few per gene family, healnet/models/omics_tokens.py). `feature_encoding="learned"`:
  token_f = v_f * W_f + E_f (a per-feature value embedding plus a learned feature identity, as in
  FT-Transformer); `"fourier"`: token_f = [v_f, fourier(position of f)] as in Perceiver/HEALNet.

Linear skip (`linear_skip`, default none): for each named tabular modality a linear risk term
w_m . x_m, added to every bin's logit, beside the latent path (a "wide" part: age, or an elastic-net-like
omics score, which the latent array learns slowly from a few hundred patients). Its weights start at
zero, so training starts from the plain model; an absent modality adds nothing. `linear_skip_scale`
multiplies the term: under Adam a weight moves ~lr per step whatever its gradient, so a scale of c
lets the linear term move c times faster than the latent path (at lr 5e-4 and a few hundred steps
it could otherwise not reach a Cox-sized age effect).

Missing modalities: a sample without modality m keeps S unchanged at m's update steps. The update
is computed on the present samples only (index_select, then index_copy back), so nothing - no zero or
random tensor - is ever attended to in place of a missing modality.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from healnet.modalities import CLINICAL, WSI
from healnet.models import register
from healnet.models.attention import Attention, FeedForward, normed_linears
from healnet.models.omics_tokens import omics_tokenizer


def fourier_features(n: int, num_bands: int, max_freq: float) -> torch.Tensor:
    """Perceiver position encoding of n positions in [-1, 1]: (n, 2 * num_bands + 1)."""
    pos = torch.linspace(-1.0, 1.0, n).unsqueeze(-1)  # (n, 1)
    freqs = torch.linspace(1.0, max_freq / 2, num_bands)  # (bands,)
    angles = pos * freqs * math.pi  # (n, bands)
    return torch.cat([angles.sin(), angles.cos(), pos], dim=-1)


class TabularTokens(nn.Module):
    """(B, F) feature values -> (B, F, token_dim) tokens, one per feature."""

    def __init__(
        self, n_features: int, dim: int, encoding: str = "learned", num_freq_bands: int = 6, max_freq: float = 10.0
    ):
        super().__init__()
        self.encoding = encoding
        if encoding == "learned":
            bound = 1.0 / math.sqrt(dim)  # FT-Transformer's initialisation
            self.weight = nn.Parameter(torch.empty(n_features, dim).uniform_(-bound, bound))
            self.identity = nn.Parameter(torch.empty(n_features, dim).uniform_(-bound, bound))
            self.out_dim = dim
        elif encoding == "fourier":
            self.register_buffer("pos", fourier_features(n_features, num_freq_bands, max_freq), persistent=False)
            self.out_dim = 1 + self.pos.shape[1]
        else:
            raise ValueError(f"HEALNet: feature_encoding must be 'learned' or 'fourier', got {encoding!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoding == "learned":
            return x.unsqueeze(-1) * self.weight + self.identity  # (B, F, dim)
        pos = self.pos.to(x.dtype).expand(x.shape[0], -1, -1)  # (B, F, 2K+1)
        return torch.cat([x.unsqueeze(-1), pos], dim=-1)  # (B, F, 2K+2)


class PatchTokens(nn.Module):
    """(B, N, D) patch features -> (B, N, dim) tokens: LayerNorm (its affine is absorbed by the
    Linear) then Linear(D, dim), without materialising the normed bag."""

    def __init__(self, d_in: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(d_in, dim)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normed_linears(x, [(self.proj.weight, self.proj.bias)])[0]


class FusionLayer(nn.Module):
    """One HEALNet layer: per modality cross-attention + FF, then latent self-attention blocks."""

    def __init__(self, token_dims: dict[str, int], latent_dim: int, self_blocks: int, hp: dict[str, Any]):
        super().__init__()
        attn_kw = dict(
            heads=hp["heads"],
            dim_head=hp["dim_head"],
            dropout=hp["attn_dropout"],
            temperature=hp["temperature"],
            out_activation=hp["out_activation"],
        )
        ff_kw = dict(mult=hp["ff_mult"], dropout=hp["ff_dropout"], snn=hp["snn"])
        self.cross_attn = nn.ModuleDict({m: Attention(latent_dim, d, **attn_kw) for m, d in token_dims.items()})
        self.cross_ff = nn.ModuleDict({m: FeedForward(latent_dim, **ff_kw) for m in token_dims})
        self.self_attn = nn.ModuleList(
            [
                Attention(
                    latent_dim,
                    heads=hp["self_heads"],
                    dim_head=hp["dim_head"],
                    dropout=hp["attn_dropout"],
                    temperature=hp["temperature"],
                    out_activation=hp["out_activation"],
                )
                for _ in range(self_blocks)
            ]
        )
        self.self_ff = nn.ModuleList([FeedForward(latent_dim, **ff_kw) for _ in range(self_blocks)])


@register("healnet")
class HEALNet(nn.Module):
    """HEALNet survival model over any number of modalities (see the module docstring).

    input_dims: modality -> size (wsi: patch feature dim D; tabular: number of features F), in the
    order the modalities update the latents. Returns logits (B, n_bins); hazards = sigmoid(logits).
    """

    def __init__(
        self,
        input_dims: dict[str, int],
        n_bins: int,
        depth: int = 2,
        num_latents: int = 16,
        latent_dim: int = 32,
        heads: int = 4,
        self_heads: int = 4,
        dim_head: int = 16,
        self_per_cross_attn: int = 1,
        ff_mult: int = 2,
        attn_dropout: float = 0.1,
        ff_dropout: float = 0.1,
        snn: bool = False,
        share_weights: bool = True,
        feature_encoding: str = "learned",
        token_dim: int = 16,
        wsi_token_dim: int | None = None,
        num_freq_bands: int = 6,
        max_freq: float = 10.0,
        temperature: float = 1.0,
        out_activation: bool = False,
        omics_tokens: str = "feature",
        tokens_per_group: int = 2,
        signatures: str | None = None,
        feature_names: dict[str, list[str]] | None = None,
        linear_skip: list[str] | None = None,
        linear_skip_scale: float = 1.0,
    ):
        super().__init__()
        if not input_dims:
            raise ValueError("HEALNet needs at least one modality in input_dims")
        bad = [m for m in linear_skip or [] if m not in input_dims or m == WSI]
        if bad:
            tabular = [m for m in input_dims if m != WSI]
            raise ValueError(f"HEALNet: linear_skip {bad} must name tabular modalities of the model: {tabular}")
        if depth < 1:
            raise ValueError(f"HEALNet: depth must be >= 1, got {depth}")
        self.modalities = list(input_dims)
        self.n_bins = n_bins
        self.tokenizers = nn.ModuleDict()
        token_dims: dict[str, int] = {}
        for m, size in input_dims.items():
            if m == WSI and wsi_token_dim is None:
                token_dims[m] = size  # patch features are the tokens
            elif m == WSI:
                self.tokenizers[m] = PatchTokens(size, wsi_token_dim)
                token_dims[m] = wsi_token_dim
            else:  # omics tokenisation: healnet/models/omics_tokens.py (age and sex: one token each)
                if omics_tokens == "feature" or m == CLINICAL:
                    tok = TabularTokens(size, token_dim, feature_encoding, num_freq_bands, max_freq)
                else:
                    tok = omics_tokenizer(omics_tokens, m, size, token_dim, feature_names, signatures, tokens_per_group)
                self.tokenizers[m] = tok
                token_dims[m] = tok.out_dim
        hp = dict(
            heads=heads,
            self_heads=self_heads,
            dim_head=dim_head,
            attn_dropout=attn_dropout,
            ff_dropout=ff_dropout,
            ff_mult=ff_mult,
            snn=snn,
            temperature=temperature,
            out_activation=out_activation,
        )
        self.latents = nn.Parameter(torch.randn(num_latents, latent_dim) * 0.02)
        layers: list[FusionLayer] = []
        for i in range(depth):
            if share_weights and i >= 2:
                layers.append(layers[1])  # layers 3..depth reuse the second layer's weights
            else:
                layers.append(FusionLayer(token_dims, latent_dim, self_per_cross_attn, hp))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Sequential(nn.LayerNorm(latent_dim), nn.Linear(latent_dim, n_bins))
        self.skip = nn.ModuleDict({m: nn.Linear(input_dims[m], 1) for m in linear_skip or []})
        self.skip_scale = float(linear_skip_scale)
        for linear in self.skip.values():  # start from the plain model
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def _present(self, batch: dict, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        given = batch.get("present", {})
        present = {}
        for m in self.modalities:
            if m in batch and m in given:
                present[m] = given[m].to(device=device, dtype=torch.bool)
            elif m in batch:
                present[m] = torch.ones(batch_size, dtype=torch.bool, device=device)
            else:  # modality not given at all: absent for every sample
                present[m] = torch.zeros(batch_size, dtype=torch.bool, device=device)
        any_present = torch.stack(list(present.values())).any(dim=0)
        if not bool(any_present.all()):
            bad = (~any_present).nonzero().flatten().tolist()
            raise ValueError(
                f"HEALNet: samples {bad} of the batch have none of the model's modalities {self.modalities}; "
                "drop such patients before calling the model"
            )
        return present

    def _wsi_kv(self, bags: torch.Tensor, idx: torch.Tensor, b: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values of the present samples' bags for every distinct layer, the tokens normed
        once: {id(layer): ((b_wsi, N, H*dh), (b_wsi, N, H*dh))}. Absent samples' bags are never read
        (they may hold anything)."""
        x = bags if idx.numel() == b else bags.index_select(0, idx)  # copies only in a mixed batch
        if WSI in self.tokenizers:
            x = self.tokenizers[WSI](x)  # (b_wsi, N, wsi_token_dim), shared by all layers
        layers = list({id(layer): layer for layer in self.layers}.values())  # shared layers once
        maps = [kv for layer in layers for kv in layer.cross_attn[WSI].folded_kv()]  # k, v of each layer
        kv = normed_linears(x, maps, layers[0].cross_attn[WSI].norm_context.eps)
        return {id(layer): (kv[2 * i], kv[2 * i + 1]) for i, layer in enumerate(layers)}

    def forward(self, batch: dict, return_attention: bool = False):
        """batch per the registry contract -> logits (B, n_bins).

        With `return_attention=True` returns (logits, attention), attention[m][layer] a (B, N_m)
        tensor of token scores (mean over heads and latents); NaN rows for samples without m.
        """
        first = next((batch[m] for m in self.modalities if m in batch), None)
        if first is None:
            raise ValueError(f"HEALNet: the batch holds none of the model's modalities {self.modalities}")
        b, device = first.shape[0], first.device
        present = self._present(batch, b, device)
        idxs = {m: present[m].nonzero().flatten() for m in self.modalities}
        tokens = {m: self.tokenizers[m](batch[m]) for m in self.modalities if m in batch and m != WSI}
        # a mask of only real tokens is dropped: attention then runs without the masking passes
        masks = {m: k for m in self.modalities if (k := batch.get(f"{m}_mask")) is not None and not bool(k.all())}
        wsi_kv = self._wsi_kv(batch[WSI], idxs[WSI], b) if WSI in idxs and idxs[WSI].numel() else {}
        s = self.latents.unsqueeze(0).expand(b, -1, -1)  # (B, L, d)
        attention: dict[str, list[torch.Tensor]] = {m: [] for m in self.modalities}
        for layer in self.layers:
            for m in self.modalities:
                idx = idxs[m]
                if idx.numel() == 0:
                    if return_attention:
                        # tokens: one per patch; per feature, modality or gene-family group
                        n = (tokens[m] if m in tokens else batch[m]).shape[1] if m in batch else 0
                        attention[m].append(torch.full((b, n), float("nan"), device=device))
                    continue
                everyone = idx.numel() == b
                s_m = s if everyone else s.index_select(0, idx)  # (b_m, L, d)
                mask = masks.get(m)
                if mask is not None and not everyone:
                    mask = mask.index_select(0, idx)
                if m == WSI:  # keys/values of the present bags, projected once per forward
                    upd, w = layer.cross_attn[m](
                        s_m, mask=mask, return_attention=return_attention, kv=wsi_kv[id(layer)]
                    )
                else:
                    ctx = tokens[m] if everyone else tokens[m].index_select(0, idx)  # (b_m, N, c)
                    upd, w = layer.cross_attn[m](s_m, ctx, mask=mask, return_attention=return_attention)
                s_m = s_m + upd
                s_m = s_m + layer.cross_ff[m](s_m)
                s = s_m if everyone else s.index_copy(0, idx, s_m)  # masked residual
                if return_attention:
                    full = torch.full((b, w.shape[1]), float("nan"), device=device, dtype=w.dtype)
                    attention[m].append(full.index_copy(0, idx, w))
            for attn, ff in zip(layer.self_attn, layer.self_ff):
                s = s + attn(s)[0]
                s = s + ff(s)
        logits = self.head(s.mean(dim=1))  # (B, n_bins)
        for m, linear in self.skip.items():  # one risk shift per sample, the same for every bin
            if m in batch:
                here = present[m].unsqueeze(1)  # absent rows may hold anything (NaN): never read
                shift = self.skip_scale * linear(batch[m].masked_fill(~here, 0.0))
                logits = logits + torch.where(here, shift, 0.0)
        if return_attention:
            return logits, attention
        return logits
