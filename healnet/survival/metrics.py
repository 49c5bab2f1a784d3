"""Survival metrics by the published convention (MCAT/PORPOISE/HEALNet) plus pycox extras.

- risk = -sum_j S_j, the negative sum of the discrete survival function over the bins;
- c-index: scikit-survival `concordance_index_censored(event, time, risk, tied_tol=1e-8)` with
  continuous survival time (not the bin);
- pycox `EvalSurv`: Antolini's time-dependent concordance (pycox's tie-adjusted variant, since a
  step survival function ties patients inside a bin) and the integrated Brier score (IPCW with a
  Kaplan-Meier censoring estimate), on the survival function as a step function over the bin edges.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)


def survival_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """S_j = prod_{i<=j} (1 - sigmoid(h_i)), shape (B, K)."""
    return torch.cumprod(1 - torch.sigmoid(logits), dim=1)


def risk_from_survival(surv: np.ndarray | torch.Tensor) -> np.ndarray:
    """Published risk score: -sum over bins of the survival function (higher = worse prognosis)."""
    s = surv.detach().cpu().numpy() if isinstance(surv, torch.Tensor) else np.asarray(surv)
    return -s.sum(axis=1)


def cindex(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's censored c-index (scikit-survival, tied_tol 1e-8); NaN when no pair is comparable."""
    from sksurv.metrics import concordance_index_censored

    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(bool)
    risk = np.asarray(risk, dtype=float)
    if len(time) < 2 or not event.any():
        return math.nan
    try:
        return float(concordance_index_censored(event, time, risk, tied_tol=1e-8)[0])
    except (ValueError, ZeroDivisionError) as err:  # no comparable pairs
        log.warning("c-index undefined on %d patients (%d events): %s", len(time), event.sum(), err)
        return math.nan


def survival_frame(surv: np.ndarray, edges: np.ndarray) -> pd.DataFrame:
    """Step survival function for pycox: index = time grid, one column per patient.

    Bin j covers [e_j, e_{j+1}); S_j is the probability of surviving past e_{j+1}, and the survival
    before e_1 is 1. The first grid point is moved to min(0, e_0) so every time is covered.
    """
    edges = np.asarray(edges, dtype=float)
    surv = np.asarray(surv, dtype=float)
    if len(edges) != surv.shape[1] + 1:
        raise ValueError(f"survival has {surv.shape[1]} bins but {len(edges)} edges were given")
    grid = edges.copy()
    grid[0] = min(0.0, grid[0])
    values = np.concatenate([np.ones((surv.shape[0], 1)), surv], axis=1)
    return pd.DataFrame(values.T, index=grid)


def pycox_metrics(
    surv: np.ndarray, edges: np.ndarray, time: np.ndarray, event: np.ndarray, n_grid: int = 100
) -> tuple[float, float]:
    """(time-dependent c-index, integrated Brier score) from pycox; NaN where undefined."""
    from pycox.evaluation import EvalSurv

    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=float)
    if len(time) < 2 or event.sum() == 0:
        return math.nan, math.nan
    ev = EvalSurv(survival_frame(surv, edges), time, event, censor_surv="km")
    try:
        ctd = float(ev.concordance_td())  # adj_antolini: ties in S count 1/2
    except (ValueError, ZeroDivisionError) as err:
        log.warning("time-dependent c-index undefined: %s", err)
        ctd = math.nan
    # IPCW weights explode where the censoring KM reaches 0 (at the largest times): stop the grid
    # at the last time where it is still positive.
    g = ev.censor_surv.surv.iloc[:, 0]
    positive = g.index[g.values > 0]
    t_max = min(time.max(), positive.max() if len(positive) else time.min())
    grid = np.linspace(time.min(), t_max, n_grid)
    if t_max <= time.min():
        return ctd, math.nan
    # pycox's own integrated_brier_score calls scipy.integrate.simps, removed in SciPy 1.14: take
    # its Brier scores and integrate them the same way (Simpson's rule / grid length).
    from scipy.integrate import simpson

    with np.errstate(all="ignore"):
        scores = np.asarray(ev.brier_score(grid), dtype=float)
        ibs = float(simpson(scores, x=grid) / (grid[-1] - grid[0]))
    return ctd, ibs if np.isfinite(ibs) else math.nan
