"""cindex_missing.tsv: models with >= 2 modalities re-run on the test patients with modalities removed.

Scenarios per fold k: (a) only modality m for every patient who has it (`<m>_only`, e.g.
`wsi_only`, `omics_only`), (b) each patient given exactly one of its modalities, chosen uniformly
with seed `evaluation.missing_seed + k` (`one_random`: 50/50 with two modalities; the paper's
Table 2 protocol). The re-runs use each run's carried preprocessing (`healnet.inference.Run`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from healnet.evaluate.metrics import MISSING_COLUMNS, metrics_of, with_summary

log = logging.getLogger(__name__)


def scenario_masks(data, idx: np.ndarray, modalities: list[str], seed: int) -> dict[str, tuple[np.ndarray, dict]]:
    """Missing-modality scenarios: name -> (patients, present override for the whole fold)."""
    base = {m: data.present(m).copy() for m in modalities}
    out = {}
    for m in modalities:
        keep = idx[base[m][idx]]
        present = {o: (base[o] if o == m else np.zeros_like(base[o])) for o in modalities}
        out[f"{m}_only"] = (keep, present)
    rng = np.random.default_rng(seed)
    present = {m: np.zeros_like(base[m]) for m in modalities}
    keep = []
    for i in idx:
        have = [m for m in modalities if base[m][i]]
        pick = rng.integers(len(have)) if len(have) > 1 else 0  # draw only when there is a choice
        if have:
            present[have[pick]][i] = True
            keep.append(i)
    out["one_random"] = (np.asarray(keep, dtype=int), present)
    return out


def missing_table(cohort, models: Sequence[str], eval_cfg) -> pd.DataFrame:
    """cindex_missing.tsv's table for `models` of `cohort` (a `healnet.evaluate.cohort.CohortRuns`)."""
    rows = []
    for k in cohort.folds:  # folds outer: each fold's data is built once per model
        for model in models:
            mods = cohort.info(model, k)["modalities"]
            if len(mods) < 2:
                log.info("model %s fold %d uses modalities %s: no missing-modality evaluation", model, k, mods)
                continue
            rows += scenario_rows(cohort.run(model, k), cohort.fold(k, cohort.run(model, k)), model, k, eval_cfg)
    missing = pd.DataFrame(rows, columns=MISSING_COLUMNS)
    return with_summary(missing, ["model", "scenario"])[MISSING_COLUMNS]


def scenario_rows(run, data, model: str, k: int, eval_cfg) -> list[dict]:
    """One row per scenario of one run on fold k's test patients."""
    rows = []
    idx = data.split_indices("test", run.modalities)
    for name, (keep, present) in scenario_masks(data, idx, run.modalities, eval_cfg.missing_seed + k).items():
        if len(keep):
            p = run.predict_data(data, keep, present=present)
            m = metrics_of(p.frame(data, keep), run.edges, eval_cfg.ibs_grid_points)
        else:
            m = {"cindex": math.nan, "cindex_td": math.nan, "ibs": math.nan, "n": 0, "events": 0}
            log.warning("model %s fold %d scenario %s: no test patient has that modality", model, k, name)
        rows.append({"model": model, "scenario": name, "fold": str(k), **m, "excluded": len(idx) - len(keep)})
        log.info("model %s fold %d %s: c-index %.4f (n %d)", model, k, name, m["cindex"], m["n"])
    return rows
