"""Evaluation of a cohort's trained runs: `cindex.tsv`, `cindex_missing.tsv` and attention inspection.

- `metrics.py`: cindex.tsv from each run's predictions.tsv, run.json and the labels (no model is
  loaded, no feature store read);
- `missing.py`: cindex_missing.tsv, the missing-modality scenarios (new forward passes);
- `cohort.py`: `CohortRuns`, a cohort's runs and the data to re-run them;
- inspection (`inspect/`): `healnet.inspection.patients`, heatmaps and top omic features of the
  highest- and lowest-risk test patients per model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from healnet.evaluate.cohort import CohortRuns
from healnet.io import write_tsv


def evaluate_cohort(
    models: Sequence[str],
    cohort: CohortRuns,
    eval_cfg,
    out_cindex: str | Path,
    out_missing: str | Path,
    inspect_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Write cindex.tsv, cindex_missing.tsv and (with `inspect_dir`) the inspection folder; returns
    cindex.tsv's table."""
    from healnet.evaluate.metrics import cindex_table
    from healnet.evaluate.missing import missing_table

    table = cindex_table(cohort, models, eval_cfg)
    write_tsv(table, out_cindex)
    write_tsv(missing_table(cohort, models, eval_cfg), out_missing)
    if inspect_dir is not None:
        from healnet.inspection.patients import inspect_models

        inspect_models(cohort, models, eval_cfg, inspect_dir)
    return table
