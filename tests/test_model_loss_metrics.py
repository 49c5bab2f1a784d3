"""Survival loss against pycox, the published alpha weighting, c-index against a brute-force count."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from healnet.survival.loss import l1_penalty, nll_loss
from healnet.survival.metrics import cindex, pycox_metrics, risk_from_survival, survival_from_logits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nll_equals_pycox_logistic_hazard(seed):
    from pycox.models.loss import nll_logistic_hazard

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(64, 4, generator=g) * 2
    bins = torch.randint(0, 4, (64,), generator=g)
    censorship = torch.randint(0, 2, (64,), generator=g)
    ours = nll_loss(logits, bins, censorship, alpha=0.0)
    ref = nll_logistic_hazard(logits, bins, (1 - censorship).float())
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    per = nll_loss(logits, bins, censorship, alpha=0.0, reduction="none")
    ref_per = nll_logistic_hazard(logits, bins, (1 - censorship).float(), reduction="none")
    torch.testing.assert_close(per, ref_per, rtol=1e-5, atol=1e-5)


def test_alpha_weights_uncensored_terms_by_hand():
    logits = torch.tensor([[0.3, -0.2, 0.5], [1.0, 0.0, -1.0]])
    h = torch.sigmoid(logits)
    s = torch.cumprod(1 - h, 1)
    # patient 0: event in bin 1 -> -log S_0 - log h_1; patient 1: censored in bin 2 -> -log S_2
    unc0 = -torch.log(s[0, 0]) - torch.log(h[0, 1])
    cen1 = -torch.log(s[1, 2])
    alpha = 0.4
    expected = ((1 - alpha) * unc0 + alpha * unc0 + (1 - alpha) * cen1) / 2
    got = nll_loss(logits, torch.tensor([1, 2]), torch.tensor([0, 1]), alpha=alpha)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_nll_clamps_extreme_logits_finite():
    logits = torch.tensor([[80.0, 80.0], [-80.0, -80.0]], requires_grad=True)
    loss = nll_loss(logits, torch.tensor([1, 0]), torch.tensor([0, 0]))
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(
        (-math.log(1e-7) + 0 - math.log(1e-7)) / 2, rel=1e-3
    )
    assert torch.isfinite(logits.grad).all()


def test_l1_penalty_counts_weight_matrices_only():
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.fill_(-0.5)
        lin.bias.fill_(7.0)
    assert l1_penalty(lin).item() == pytest.approx(3.0)


def brute_force_cindex(time, event, risk):
    """Harrell's: pairs where i had an event before j's time (or at it, j censored); higher risk of i
    is concordant, a risk tie counts 1/2."""
    num = den = 0.0
    for i, j in itertools.permutations(range(len(time)), 2):
        if event[i] and (time[i] < time[j] or (time[i] == time[j] and not event[j])):
            den += 1
            num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return num / den


def test_cindex_matches_brute_force_with_ties():
    rng = np.random.default_rng(3)
    time = rng.integers(1, 30, 25).astype(float)  # tied times
    event = rng.random(25) < 0.6
    risk = np.round(rng.normal(size=25), 1)  # tied risks
    assert cindex(time, event, risk) == pytest.approx(brute_force_cindex(time, event, risk), abs=1e-12)


def test_cindex_small_case_by_hand():
    # times 1 (event), 2 (event), 3 (censored); risk orders 1 > 2 but 3 above 2: pairs (1,2),(1,3),(2,3)
    assert cindex(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0]), np.array([3.0, 1.0, 2.0])) == pytest.approx(2 / 3)
    assert math.isnan(cindex(np.array([1.0, 2.0]), np.array([0, 0]), np.array([1.0, 2.0])))


def test_risk_is_minus_sum_of_survival():
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    surv = survival_from_logits(logits)
    assert surv[0].tolist() == pytest.approx([0.5, 0.25])
    assert risk_from_survival(surv).tolist() == pytest.approx([-0.75, -float(surv[1].sum())])


def test_pycox_metrics_reward_good_predictions():
    rng = np.random.default_rng(0)
    n = 120
    r = rng.normal(size=n)  # true log hazard ratio
    time = rng.exponential(20 * np.exp(-r)) + 0.1
    event = (rng.random(n) < 0.7).astype(int)
    edges = np.quantile(time[event == 1], [0, 0.25, 0.5, 0.75, 1.0])
    edges[0], edges[-1] = time.min() - 1e-6, time.max() + 1e-6
    good = np.exp(-edges[None, 1:] / 20 * np.exp(r)[:, None])  # the true survival at the bin ends
    bad = good[rng.permutation(n)]
    ctd_good, ibs_good = pycox_metrics(good, edges, time, event)
    ctd_bad, ibs_bad = pycox_metrics(bad, edges, time, event)
    # 4-bin step functions tie every pair inside the first bin (S = 1), so td-concordance sits lower
    assert ctd_good > 0.6 and ctd_bad < 0.58 and ctd_good - ctd_bad > 0.05
    assert 0 < ibs_good < ibs_bad < 0.5
    assert cindex(time, event, risk_from_survival(good)) > 0.7
