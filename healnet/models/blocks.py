"""Small blocks and batch helpers shared by the baseline models (SNN, ABMIL, Porpoise, MCAT, Perceiver).

Batch contract: see `healnet.models` (the registry docstring). Tabular modalities (`omics`, or the
per-type `rnaseq`/`cnv`/`mut`) are concatenated in `input_dims` order into one (B, F) matrix; a
sample's tabular modalities must agree on presence, because omics-missing is a per-patient state
and concatenating present with absent parts would amount to imputing the absent ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn as nn

from healnet.modalities import WSI
from healnet.models.attention import lecun_normal_

# --- tiny helpers -------------------------------------------------------------------------------


def tabular_modalities(input_dims: Mapping[str, int]) -> list[str]:
    """The model's tabular modalities, in `input_dims` order (everything but `wsi`)."""
    return [m for m in input_dims if m != WSI]


def init_snn_(module: nn.Module) -> None:
    """Self-normalising init of every Linear in `module` (N(0, 1/fan_in), zero bias), as MCAT's SNN."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            lecun_normal_(m)


def init_xavier_(module: nn.Module) -> None:
    """Xavier-normal weights, zero bias: the init of the CLAM/MCAT attention-MIL models."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def snn_block(d_in: int, d_out: int, dropout: float = 0.25) -> nn.Sequential:
    """One self-normalising block: Linear -> ELU -> AlphaDropout (MCAT's SNN_Block)."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ELU(), nn.AlphaDropout(p=dropout))


def snn_stack(d_in: int, hidden: list[int], dropout: float = 0.25) -> nn.Sequential:
    """`len(hidden)` SNN blocks d_in -> hidden[0] -> ... -> hidden[-1], with the SNN init."""
    dims = [d_in, *hidden]
    net = nn.Sequential(*(snn_block(a, b, dropout) for a, b in zip(dims[:-1], dims[1:])))
    init_snn_(net)
    return net


def mlp_block(d_in: int, d_out: int, dropout: float = 0.25) -> nn.Sequential:
    """Linear -> ReLU -> Dropout."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Dropout(dropout))


# --- batch access -------------------------------------------------------------------------------


def present_of(batch: Mapping, modality: str, n: int, device: torch.device) -> torch.Tensor:
    """batch["present"][modality] as bool (B,); all True when the batch does not say."""
    present = batch.get("present", {}).get(modality)
    if present is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    present = torch.as_tensor(present, device=device).bool()
    if present.shape != (n,):
        raise ValueError(f"batch['present'][{modality!r}] has shape {tuple(present.shape)}, expected ({n},)")
    return present


def wsi_input(batch: Mapping) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bags (B, N, D), mask (B, N) True = real patch, present (B,)), checked for consistency."""
    if WSI not in batch:
        raise ValueError("batch has no 'wsi' tensor, but the model uses the wsi modality")
    x = batch[WSI]
    if x.dim() != 3:
        raise ValueError(f"batch['wsi'] must be (B, N, D) padded bags, got shape {tuple(x.shape)}")
    b, n, _ = x.shape
    mask = batch.get("wsi_mask")
    mask = torch.ones(b, n, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
    if mask.shape != (b, n):
        raise ValueError(f"batch['wsi_mask'] has shape {tuple(mask.shape)}, expected {(b, n)}")
    present = present_of(batch, WSI, b, x.device)
    empty = present & ~mask.any(dim=1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(
            f"samples {rows} are marked wsi-present but have no real patch in wsi_mask; "
            "mark them absent in batch['present']['wsi'] (a slide without patches is WSI-missing)"
        )
    # padding rows may hold anything (stale features, NaN); zero them so that a zero attention weight
    # really removes them (0 * NaN would not)
    x = x.masked_fill(~mask[..., None], 0.0)
    return x, mask, present


def tabular_input(batch: Mapping, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tabular modalities concatenated: (x (B, F), present (B,))."""
    missing = [m for m in names if m not in batch]
    if missing:
        raise ValueError(f"batch has no tensor for modalities {missing}, but the model uses them")
    xs = [batch[m] for m in names]
    for m, x in zip(names, xs):
        if x.dim() != 2:
            raise ValueError(f"batch[{m!r}] must be (B, F), got shape {tuple(x.shape)}")
    b = xs[0].shape[0]
    presents = torch.stack([present_of(batch, m, b, xs[0].device) for m in names])  # (M, B)
    disagree = (presents != presents[0]).any(dim=0)
    if disagree.any():
        raise ValueError(
            f"samples {disagree.nonzero().flatten().tolist()} have some of {names} present and others "
            "absent; omics presence is per patient, so mark all of a patient's omic types alike"
        )
    return torch.cat(xs, dim=1), presents[0]


def batch_size(batch: Mapping, modalities: list[str]) -> tuple[int, torch.device]:
    """(B, device) of the batch, read from the first of `modalities` it holds."""
    for m in modalities:
        if m in batch:
            return batch[m].shape[0], batch[m].device
    raise ValueError(f"batch holds none of the model's modalities {modalities}")


def require_present(present: torch.Tensor, model: str, modality: str) -> None:
    """Unimodal models cannot predict without their modality: a clear error instead of a guess."""
    if not bool(present.all()):
        rows = (~present).nonzero().flatten().tolist()
        raise ValueError(
            f"{model} uses only the {modality} modality, but samples {rows} of this batch lack it; "
            f"drop those patients for {model}, or use a multimodal model"
        )


def require_any(*presents: torch.Tensor) -> None:
    """The batch contract: every sample has at least one modality."""
    anyp = torch.stack(presents).any(dim=0)
    if not bool(anyp.all()):
        rows = (~anyp).nonzero().flatten().tolist()
        raise ValueError(f"samples {rows} of this batch have no modality present; remove them from the data")


def on_rows(
    present: torch.Tensor, fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, out_dim: int | tuple[int, ...]
) -> torch.Tensor:
    """fn applied to the rows where `present`; zeros (B, *out_dim) elsewhere.

    Absent rows never enter `fn`, so whatever placeholder values they hold (zeros, NaN) can neither
    change the output nor the gradients.
    """
    b = present.shape[0]
    ref = tensors[0]
    out = ref.new_zeros(b, *((out_dim,) if isinstance(out_dim, int) else out_dim))
    if bool(present.any()):
        idx = present.nonzero().flatten()
        out = out.index_copy(0, idx, fn(*(t[idx] for t in tensors)))
    return out


# --- attention pooling --------------------------------------------------------------------------


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over `dim` with padded positions (mask False) given exactly zero weight."""
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=dim)


class GatedAttention(nn.Module):
    """Gated attention MIL pooling (Ilse et al. 2018, eq. 9): a = w^T (tanh(V h) * sigm(U h)).

    Padded instances get zero weight, so a padded bag pools exactly like the unpadded one.
    """

    def __init__(self, dim: int = 512, hidden: int = 256, dropout: float = 0.25) -> None:
        super().__init__()
        self.tanh = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.sigm = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.score = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # h: (B, N, L); mask: (B, N) True = real instance
        a = self.score(self.tanh(h) * self.sigm(h)).squeeze(-1)  # (B, N)
        if mask is None:
            mask = torch.ones_like(a, dtype=torch.bool)
        weights = masked_softmax(a, mask)  # (B, N)
        pooled = torch.einsum("bn,bnl->bl", weights, h)  # (B, L)
        return pooled, weights
