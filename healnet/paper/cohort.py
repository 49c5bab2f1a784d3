"""Per cohort: every paper model evaluated, the Table 2 XOR baseline, and the attention inspection.

The models are evaluated by `healnet.evaluate.evaluate_cohort` (the same function as the cohort's
`cindex.tsv`), so the paper's numbers are the pipeline's numbers for the union of models the paper
needs. The XOR baseline uses the exact patient-to-modality assignment of `missing_model`'s
`one_random` scenario (`healnet.evaluate.missing.scenario_masks`, seed `evaluation.missing_seed + k`): a
patient given omics is predicted by `unimodal["omics"]` (SNN), one given the slides by
`unimodal["wsi"]` (ABMIL). Their predictions need no re-run: a unimodal model sees only its own
modality, so its `predictions.tsv` row for that patient is what it predicts in the scenario.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from healnet.evaluate.metrics import MISSING_COLUMNS, first_seed, metrics_of, with_summary
from healnet.evaluate.missing import scenario_masks
from healnet.io import write_tsv

log = logging.getLogger(__name__)

XOR = "xor"
PATIENT_COLUMNS = ["fold", "case_id", "given", "xor_model", "xor_risk", "paired_model", "paired_risk", "time", "event"]


def given_modality(
    present: Mapping[str, np.ndarray], keep: np.ndarray, modalities: Sequence[str], case_ids: Sequence[str]
) -> dict[str, str]:
    """case_id -> the one modality a patient keeps in a one-modality scenario."""
    out = {}
    for i in keep:
        have = [m for m in modalities if present[m][i]]
        if len(have) != 1:
            raise ValueError(f"patient {case_ids[i]}: {len(have)} modalities {have} in a one-modality scenario")
        out[case_ids[i]] = have[0]
    return out


def xor_frame(
    given: Mapping[str, str], predictions: Mapping[str, pd.DataFrame], unimodal: Mapping[str, str]
) -> pd.DataFrame:
    """Each patient's row of the unimodal model of its given modality, in the order of `given`.

    `predictions`: modality -> that model's predictions.tsv of the fold (case_id, risk, surv_*,
    time, event, ...). A patient missing from them is an error: the model did not see the patient.
    """
    rows = []
    for case, modality in given.items():
        if modality not in unimodal:
            raise ValueError(f"patient {case} is given {modality!r}, which has no unimodal model in paper.unimodal")
        pred = predictions[modality]
        hit = pred[pred["case_id"] == case]
        if hit.empty:
            raise ValueError(
                f"patient {case}: not in the test predictions of {unimodal[modality]!r}, the unimodal model "
                f"for {modality}; retrain it on the same folds (its predictions are stale)"
            )
        rows.append(hit.iloc[0].to_dict() | {"given": modality, "xor_model": unimodal[modality]})
    return pd.DataFrame(rows)


def xor_baseline(
    cohort, missing_model: str, unimodal: Mapping[str, str], eval_cfg
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-fold metrics rows in the cindex_missing.tsv format, per-patient table) of the XOR baseline.

    `cohort` is a `healnet.evaluate.cohort.CohortRuns`. The per-patient table also holds
    `missing_model`'s risk for the same patient given the same modality (`paired_risk`), for paired
    comparisons.
    """
    rows, patients = [], []
    for k in cohort.folds:
        mods = cohort.info(missing_model, k)["modalities"]
        if len(mods) < 2:
            log.warning("fold %d: %s uses only %s in this cohort; no XOR baseline", k, missing_model, mods)
            rows.append(
                {
                    "model": XOR,
                    "scenario": "one_random",
                    "fold": str(k),
                    "cindex": math.nan,
                    "cindex_td": math.nan,
                    "ibs": math.nan,
                    "n": 0,
                    "events": 0,
                    "excluded": 0,
                }
            )
            continue
        row, frame = xor_fold(cohort, k, missing_model, unimodal, eval_cfg)
        rows.append(row)
        patients.append(frame)
    per_patient = (
        pd.concat(patients, ignore_index=True)[PATIENT_COLUMNS] if patients else pd.DataFrame(columns=PATIENT_COLUMNS)
    )
    return pd.DataFrame(rows, columns=MISSING_COLUMNS), per_patient


def xor_fold(cohort, k: int, missing_model: str, unimodal: Mapping[str, str], eval_cfg) -> tuple[dict, pd.DataFrame]:
    """Fold k's XOR row and per-patient rows: the `one_random` assignment of `missing_model`."""
    from healnet.survival.metrics import cindex

    run = cohort.run(missing_model, k)
    data = cohort.fold(k, run)
    idx = data.split_indices("test", run.modalities)
    keep, present = scenario_masks(data, idx, run.modalities, eval_cfg.missing_seed + k)["one_random"]
    given = given_modality(present, keep, run.modalities, data.case_ids)
    # seed 0, the checkpoint's run
    preds = {m: first_seed(cohort.predictions(model, k)) for m, model in unimodal.items() if m in run.modalities}
    frame = xor_frame(given, preds, unimodal)
    frame["paired_risk"] = run.predict_data(data, keep, present=present).risk
    m = metrics_of(frame, run.edges, eval_cfg.ibs_grid_points)
    row = {"model": XOR, "scenario": "one_random", "fold": str(k), **m, "excluded": len(idx) - len(keep)}
    log.info(
        "fold %d XOR baseline: c-index %.4f on %d patients %s; %s given one modality: %.4f",
        k,
        m["cindex"],
        m["n"],
        frame["given"].value_counts().to_dict(),
        missing_model,
        cindex(frame["time"], frame["event"], frame["paired_risk"]),
    )
    return row, frame.assign(fold=k, paired_model=missing_model, xor_risk=frame["risk"])


def paper_cohort(
    models: Sequence[str], cohort, eval_cfg, paper_cfg, patching_cfg, outdir: str | Path, inspect_dir: str | Path
) -> pd.DataFrame:
    """Write outdir/{cindex,cindex_missing,xor,xor_patients}.tsv and the inspection folder for `cohort`
    (a `healnet.evaluate.cohort.CohortRuns`: each checkpoint is loaded once for all three)."""
    from healnet.evaluate import evaluate_cohort
    from healnet.paper.inspection import inspect_cohort

    outdir = Path(outdir)
    table = evaluate_cohort(models, cohort, eval_cfg, outdir / "cindex.tsv", outdir / "cindex_missing.tsv")
    if paper_cfg.missing_model:
        rows, patients = xor_baseline(cohort, paper_cfg.missing_model, paper_cfg.unimodal, eval_cfg)
    else:
        rows, patients = pd.DataFrame(columns=MISSING_COLUMNS), pd.DataFrame(columns=PATIENT_COLUMNS)
    write_tsv(with_summary(rows, ["model", "scenario"])[MISSING_COLUMNS], outdir / "xor.tsv")
    write_tsv(patients, outdir / "xor_patients.tsv")
    inspect_cohort(paper_cfg.inspect_model, cohort, eval_cfg, paper_cfg, patching_cfg, inspect_dir)
    return table
