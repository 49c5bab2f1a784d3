"""Where a trained run lives and what it holds: the one owner of the layout, for the package and
the rules (workflow/rules import `run_file`, `cohort_runs`, the file names).

A run is `results/{cohort}/models/{model}/fold{k}/` with
- `checkpoint.pt`: the weights and everything fitted on the fold's training patients (omics
  transform, bin edges, WSI centre, model spec, the encoder it expects); `healnet.load_run` reads it;
- `run.json`: the checkpoint's metadata without tensors (what evaluation reads for cindex.tsv:
  modalities, bin edges, ...), written with it from the same dict;
- `predictions.tsv`: the fold's test patients (case_id, [seed,] risk, surv_<j>, modalities, event,
  time, bin); `train_log.tsv`: one row per epoch and seed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from healnet.io import write_text

CHECKPOINT = "checkpoint.pt"
RUN_JSON = "run.json"
PREDICTIONS = "predictions.tsv"
TRAIN_LOG = "train_log.tsv"
RUN_FILES = (CHECKPOINT, RUN_JSON, PREDICTIONS, TRAIN_LOG)
MODELS_DIR = "results/{cohort}/models"
RUN_DIR = MODELS_DIR + "/{model}/fold{fold}"  # the rules' pattern (wildcards cohort, model, fold)


def models_dir(cohort: str) -> str:
    return MODELS_DIR.format(cohort=cohort)


def run_dir(models_dir: str | Path, model: str, fold: int) -> Path:
    """`<models_dir>/<model>/fold<k>`."""
    return Path(models_dir) / model / f"fold{fold}"


def run_file(name: str) -> str:
    """`RUN_DIR/<name>`: a rule's output pattern (e.g. run_file(CHECKPOINT))."""
    return f"{RUN_DIR}/{name}"


def run_of(path: str | Path) -> tuple[str, int]:
    """(model, fold) of a file in a run, `.../models/{model}/fold{k}/predictions.tsv`."""
    path = Path(path)
    m = re.match(r"^fold(\d+)$", path.parent.name)
    if not m or not path.parent.parent.name:
        raise ValueError(
            f"predictions file {path}: expected a path like results/<cohort>/models/<model>/fold<k>/predictions.tsv "
            "(as `healnet train` writes it); pass the files the train rule made"
        )
    return path.parent.parent.name, int(m.group(1))


def cohort_runs(cohort: str, models: Iterable[str], n_folds: int) -> list[str]:
    """The run folders of every model and fold of a cohort (model-major)."""
    return [str(run_dir(models_dir(cohort), m, k)) for m in models for k in range(n_folds)]


def require(run: str | Path, model: str, fold: int, *names: str) -> None:
    """Raise FileNotFoundError naming the first of `names` missing in `run` and the rule that makes it."""
    for name in names:
        if not (Path(run) / name).exists():
            raise FileNotFoundError(
                f"{Path(run) / name} does not exist: model {model!r} has not been trained on fold {fold}; "
                f"run `healnet train` (rule train) for it or drop it from the cohort's models"
            )


def read_predictions(run: str | Path) -> pd.DataFrame:
    """A run's predictions.tsv (every seed's rows)."""
    return pd.read_csv(Path(run) / PREDICTIONS, sep="\t", dtype={"case_id": str})


def read_info(run: str | Path) -> dict:
    """A run's run.json (the checkpoint's metadata)."""
    path = Path(run) / RUN_JSON
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; the run was trained by an older healnet: retrain it (rule train)"
        )
    return json.loads(path.read_text())


def write_info(info: dict, run: str | Path) -> None:
    write_text(json.dumps(info, indent=1) + "\n", Path(run) / RUN_JSON)
