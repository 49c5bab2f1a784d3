"""Discrete-time survival loss: the negative log-likelihood over survival bins.

Zadeh & Schmid (2020), "Bias in cross-entropy-based training of deep survival networks", and the
MCAT/PORPOISE/HEALNet `nll_loss`: with hazards lambda_j = sigmoid(h_j) and survival
S_j = prod_{i<=j} (1 - lambda_i), S_{-1} = 1, a patient in bin Y contributes

    uncensored:  L_unc  = -log S_{Y-1} - log lambda_Y
    censored:    L_cens = -log S_Y

and the loss is (1 - alpha) * (L_unc + L_cens) + alpha * L_unc, averaged over the batch.
With alpha = 0 this is exactly pycox's logistic-hazard NLL (Kvamme & Borgan 2019, eq. 8).
Logs are taken through logsigmoid for stability and clamped at log(eps) like the published code.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def nll_loss(
    logits: torch.Tensor,
    bins: torch.Tensor,
    censorship: torch.Tensor,
    alpha: float = 0.0,
    eps: float = 1e-7,
    reduction: str = "mean",
) -> torch.Tensor:
    """Discrete-time NLL. logits (B, K); bins (B,) int in [0, K); censorship (B,) 1 = censored."""
    if logits.ndim != 2:
        raise ValueError(f"nll_loss: logits must be (batch, bins), got shape {tuple(logits.shape)}")
    bins = bins.long().view(-1, 1)
    c = censorship.to(logits.dtype).view(-1)
    floor = math.log(eps)
    log_h = F.logsigmoid(logits).clamp(min=floor)  # log lambda_j
    log_1mh = F.logsigmoid(-logits)  # log(1 - lambda_j)
    # log S_j for j = -1 .. K-1 (column 0 is S_{-1} = 1)
    log_s = torch.cat([torch.zeros_like(logits[:, :1]), torch.cumsum(log_1mh, dim=1)], dim=1)
    log_s = log_s.clamp(min=floor)
    log_s_prev = log_s.gather(1, bins).view(-1)  # log S_{Y-1}
    log_s_y = log_s.gather(1, bins + 1).view(-1)  # log S_Y
    log_h_y = log_h.gather(1, bins).view(-1)
    uncensored = -(1 - c) * (log_s_prev + log_h_y)
    censored = -c * log_s_y
    loss = (1 - alpha) * (uncensored + censored) + alpha * uncensored
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"nll_loss: unknown reduction {reduction!r}; use mean, sum or none")


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over weight matrices (not biases or norm gains), for optional L1 regularisation."""
    terms = [p.abs().sum() for name, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()
