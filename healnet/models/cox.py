"""Classical reference models: elastic-net Cox (`coxnet`) and Cox on age + sex (`cox_clinical`).

They answer one question a reader of Table 1 has: does the deep model earn its cost over a linear
Cox model on the same folds? Both are fitted in closed form (scikit-survival), not by the epoch loop:
the training loop calls `fit(x, time, event, edges, seed)` on the fold's training patients only
(`closed_form = True`), then scores the test patients through `forward` like any registry model.

Fitting (all statistics from the training patients passed to `fit`):
- every feature is z-scored with the training mean and sd and clipped to +-`clip` (a rare
  mutation's z can reach ~17; a few outliers must not decide the penalty);
- `coxnet`: `CoxnetSurvivalAnalysis(l1_ratio)` computes its alpha path on the training patients; alpha
  is chosen by `inner_folds`-fold cross-validation inside them (stratified on the event, seeded),
  maximising the mean inner c-index, then the path model predicts with that alpha. Test patients never
  enter `fit`, so nothing is chosen on them (tests/test_cox.py poisons their labels to check);
- `cox_clinical`: `CoxPHSurvivalAnalysis` (ridge `alpha`, 1e-4: only for numerical stability) on the
  `clinical` modality (age, is_female; a sex constant in the fold, as in BRCA or UCEC, is dropped
  by the omics transform and the model is Cox on age alone).

Output as the registry contract asks: with the linear predictor lp = x . beta and the Breslow
cumulative baseline hazard H0 at the right edge of each survival bin, S_j = exp(-H0(e_{j+1}) exp(lp))
and the hazard logits h_j = logit(1 - S_j / S_{j-1}). The published risk -sum_j S_j is then monotone
in lp, so the c-index is the linear predictor's.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn

from healnet.models import register
from healnet.models.blocks import require_present, tabular_input, tabular_modalities

log = logging.getLogger(__name__)


def breslow(lp: np.ndarray, time: np.ndarray, event: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Breslow cumulative baseline hazard H0(t) at times `at`: the sum over event times t_i <= t of
    d_i / sum_{j: t_j >= t_i} exp(lp_j) (tied times share one risk set)."""
    shift = lp.max()  # exp(lp - shift) cannot overflow; the shift is undone on the sum
    risk = np.exp(lp - shift)
    observed = event.astype(bool)
    times = np.unique(time[observed])
    steps = np.array([np.sum(observed & (time == t)) / risk[time >= t].sum() for t in times]) * np.exp(-shift)
    cum = np.cumsum(steps)
    idx = np.searchsorted(times, at, side="right")  # event times <= each query time
    return np.where(idx > 0, cum[np.maximum(idx - 1, 0)], 0.0)


def stratified_folds(event: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k folds stratified on the event indicator (fewer when there are too few events)."""
    from sklearn.model_selection import StratifiedKFold

    k = max(2, min(k, int(event.sum()), int((1 - event).sum()) or k))
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(event)), event))


class LinearCox(nn.Module):
    """A linear Cox model as a registry model (see the module docstring); subclasses implement `_fit`."""

    closed_form = True

    def __init__(self, input_dims: dict[str, int], n_bins: int, clip: float = 5.0) -> None:
        super().__init__()
        self.tabular = tabular_modalities(input_dims)
        if not self.tabular or len(self.tabular) != len(input_dims):
            raise ValueError(
                f"{self.name}: tabular modalities only (omics, rnaseq, cnv, mut, clinical); got {sorted(input_dims)}"
            )
        n = sum(input_dims[m] for m in self.tabular)
        self.clip = clip
        self.register_buffer("center", torch.zeros(n))
        self.register_buffer("scale", torch.ones(n))
        self.register_buffer("beta", torch.zeros(n))
        self.register_buffer("log_h0", torch.zeros(n_bins))  # log H0 at the right edge of each bin

    name = "linear cox"

    def standardise(self, x: np.ndarray) -> np.ndarray:
        c, s = self.center.cpu().numpy(), self.scale.cpu().numpy()
        return np.clip((x - c) / s, -self.clip, self.clip)

    def fit(self, x: np.ndarray, time: np.ndarray, event: np.ndarray, edges: np.ndarray, seed: int = 0) -> dict:
        """Fit on training patients only: x (n, F), time, event (1 = observed); returns what was chosen."""
        x = np.asarray(x, dtype=np.float64)
        event = np.asarray(event).astype(int)
        if event.sum() < 1:
            raise ValueError(f"{self.name}: no event among the {len(event)} training patients; a Cox model needs one")
        center, sd = x.mean(axis=0), x.std(axis=0)
        self.center.copy_(torch.as_tensor(center))
        self.scale.copy_(torch.as_tensor(np.where(sd > 0, sd, 1.0)))
        z = self.standardise(x)
        beta, info = self._fit(z, np.asarray(time, dtype=float), event, seed)
        lp = z @ beta
        h0 = breslow(lp, np.asarray(time, dtype=float), event, np.asarray(edges, dtype=float)[1:])
        self.beta.copy_(torch.as_tensor(beta))
        self.log_h0.copy_(torch.as_tensor(np.log(np.maximum(h0, 1e-12))))
        info["nonzero"] = int(np.count_nonzero(beta))
        return info

    def _fit(self, z: np.ndarray, time: np.ndarray, event: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    def forward(self, batch: Mapping) -> torch.Tensor:
        x, present = tabular_input(batch, self.tabular)  # (B, F), (B,)
        require_present(present, self.name, "+".join(self.tabular))
        z = ((x - self.center) / self.scale).clamp(-self.clip, self.clip)
        lp = z.to(self.beta.dtype) @ self.beta  # (B,)
        cum = torch.exp(self.log_h0.unsqueeze(0) + lp.unsqueeze(1))  # (B, K): H0_j exp(lp)
        step = torch.diff(cum, dim=1, prepend=torch.zeros_like(cum[:, :1])).clamp(min=1e-12)  # hazard mass per bin
        # lambda_j = 1 - exp(-step); logit = log(lambda) - log(1 - lambda) = log(-expm1(-step)) + step
        return (torch.log(-torch.expm1(-step)) + step).float()  # (B, K)


@register("coxnet")
class CoxNet(LinearCox):
    """Elastic-net Cox (scikit-survival `CoxnetSurvivalAnalysis`), alpha by inner CV on the training patients."""

    name = "coxnet"
    missing_modality_handling = "unimodal (tabular): a sample without its modality is an error"

    def __init__(
        self,
        input_dims: dict[str, int],
        n_bins: int,
        l1_ratio: float = 0.5,
        n_alphas: int = 30,
        alpha_min_ratio: float = 0.01,
        inner_folds: int = 3,
        clip: float = 5.0,
        max_iter: int = 100000,
    ) -> None:
        super().__init__(input_dims, n_bins, clip)
        self.l1_ratio, self.n_alphas, self.alpha_min_ratio = l1_ratio, n_alphas, alpha_min_ratio
        self.inner_folds, self.max_iter = inner_folds, max_iter

    def _model(self, alphas=None):
        from sksurv.linear_model import CoxnetSurvivalAnalysis

        return CoxnetSurvivalAnalysis(
            l1_ratio=self.l1_ratio,
            n_alphas=self.n_alphas,
            alpha_min_ratio=self.alpha_min_ratio,
            alphas=alphas,
            max_iter=self.max_iter,
        )

    def _fit(self, z, time, event, seed):
        from sksurv.util import Surv

        from healnet.survival.metrics import cindex

        y = Surv.from_arrays(event.astype(bool), time)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter on small inner folds; the choice is logged
            full = self._model().fit(z, y)
            alphas = full.alphas_
            if event.sum() < self.inner_folds:  # no inner fold could hold an event: no CV possible
                best = int(
                    np.flatnonzero(np.abs(full.coef_).sum(axis=0) > 0)[:1].tolist()[0]
                    if np.abs(full.coef_).sum() > 0
                    else len(alphas) - 1
                )
                log.warning(
                    "coxnet: %d events < %d inner folds: no inner CV; alpha %.4g, the strongest penalty "
                    "with a nonzero coefficient",
                    int(event.sum()),
                    self.inner_folds,
                    alphas[best],
                )
                return full.coef_[:, best].copy(), {"alpha": float(alphas[best]), "inner_cindex": float("nan")}
            scores = []
            for tr, va in stratified_folds(event, self.inner_folds, seed):
                inner = self._model(alphas).fit(z[tr], y[tr])
                lp = z[va] @ inner.coef_  # (n_val, n_alphas): every alpha of the path at once
                scores.append([cindex(time[va], event[va], lp[:, j]) for j in range(lp.shape[1])])
        scores = np.asarray(scores, dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an alpha no inner fold could score
            mean = np.nanmean(scores, axis=0)
        best = int(np.nanargmax(mean)) if np.isfinite(mean).any() else len(alphas) - 1
        log.info(
            "coxnet: alpha %.4g chosen by %d-fold inner CV (c-index %.3f) of %d alphas",
            alphas[best],
            len(scores),
            mean[best],
            len(alphas),
        )
        return full.coef_[:, best].copy(), {"alpha": float(alphas[best]), "inner_cindex": float(mean[best])}


@register("cox_clinical")
class CoxClinical(LinearCox):
    """Cox proportional hazards on the clinical modality (age, sex), scikit-survival `CoxPHSurvivalAnalysis`."""

    name = "cox_clinical"
    missing_modality_handling = "unimodal (clinical): a sample without age/sex is an error"

    def __init__(self, input_dims: dict[str, int], n_bins: int, alpha: float = 1e-4, clip: float = 5.0) -> None:
        super().__init__(input_dims, n_bins, clip)
        self.alpha = alpha

    def _fit(self, z, time, event, seed):
        from sksurv.linear_model import CoxPHSurvivalAnalysis
        from sksurv.util import Surv

        model = CoxPHSurvivalAnalysis(alpha=self.alpha).fit(z, Surv.from_arrays(event.astype(bool), time))
        return np.asarray(model.coef_, dtype=float), {}
