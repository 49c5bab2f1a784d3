"""A cohort's trained runs and the data to re-run them (missing-modality scenarios, inspection).

Each run's predictions.tsv and run.json are read once, each checkpoint is loaded once, the feature
stores once (bags do not depend on the fold). A fold's data for re-running a run goes through what
the run carries (omics transform, bin edges): nothing is refitted here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from healnet import runs
from healnet.evaluate.metrics import fold_number

log = logging.getLogger(__name__)


class CohortRuns:
    """The runs `<models_dir>/<model>/fold<k>` of one cohort and its stage files (labels, folds,
    omics matrix, feature stores, sample sheet)."""

    def __init__(
        self,
        models_dir: str | Path,
        fold_files: dict[int, Path],
        labels: str | Path | None = None,
        omics: str | Path | None = None,
        feature_stores: Sequence[str | Path] = (),
        sheet: str | Path | None = None,
        cache_gb: float = 2.0,
        device: str = "cpu",
    ):
        self.models_dir, self.fold_files, self.labels = Path(models_dir), dict(fold_files), labels
        self.omics, self.feature_stores, self.sheet = omics, list(feature_stores or []), sheet
        self.cache_bytes, self.device = int(cache_gb * 2**30), device
        self._predictions, self._info, self._runs = {}, {}, {}
        self._wsi, self._omics_frame, self._fold = None, None, (None, None)

    @classmethod
    def from_files(
        cls,
        models_dir: str | Path,
        fold_files: Sequence[str | Path],
        labels: str | Path,
        omics: str | Path | None = None,
        feature_stores: Sequence[str | Path] = (),
        sheet: str | Path | None = None,
        cache_gb: float = 2.0,
        device: str = "cpu",
    ) -> CohortRuns:
        """The cohort of the stage files the evaluate and paper rules get (fold numbers from the names)."""
        folds = {fold_number(f): Path(f) for f in fold_files}
        return cls(models_dir, folds, labels, omics, feature_stores, sheet, cache_gb, device)

    @property
    def folds(self) -> list[int]:
        return sorted(self.fold_files)

    def run_dir(self, model: str, k: int) -> Path:
        return runs.run_dir(self.models_dir, model, k)

    def predictions(self, model: str, k: int) -> pd.DataFrame:
        """The run's predictions.tsv (every seed)."""
        if (model, k) not in self._predictions:
            runs.require(self.run_dir(model, k), model, k, runs.PREDICTIONS, runs.RUN_JSON)
            self._predictions[model, k] = runs.read_predictions(self.run_dir(model, k))
        return self._predictions[model, k]

    def info(self, model: str, k: int) -> dict:
        """The run's run.json (modalities, bin edges, ...)."""
        if (model, k) not in self._info:
            runs.require(self.run_dir(model, k), model, k, runs.RUN_JSON)
            self._info[model, k] = runs.read_info(self.run_dir(model, k))
        return self._info[model, k]

    def run(self, model: str, k: int):
        """The trained run (`healnet.inference.Run`), loaded once."""
        from healnet.inference import load_run

        if (model, k) not in self._runs:
            runs.require(self.run_dir(model, k), model, k, runs.CHECKPOINT)
            self._runs[model, k] = load_run(self.run_dir(model, k), self.device)
        return self._runs[model, k]

    def pooled_predictions(self, model: str) -> pd.DataFrame:
        """The first seed's test predictions of every fold, with a `fold` column."""
        from healnet.evaluate.metrics import first_seed

        return pd.concat([first_seed(self.predictions(model, k)).assign(fold=k) for k in self.folds], ignore_index=True)

    def fold(self, k: int, run):
        """Fold k's patients as `run` sees them (its omics transform, bin edges and modalities); the
        last one is kept, so a loop over folds, then models, builds each once."""
        from healnet.training.data import WSI, read_bags, read_fold_labels, read_omics

        key = (k, run.path)
        if self._fold[0] != key:
            _, patients = read_fold_labels(self.labels, self.fold_files[k])
            if self._wsi is None and self.feature_stores and WSI in run.modalities:
                self._wsi = read_bags(self.feature_stores, self.sheet, self.cache_bytes)
            tabular = any(m != WSI for m in run.modalities)
            if self._omics_frame is None and self.omics is not None and tabular:
                self._omics_frame = read_omics(self.omics)
            wsi = self._wsi if WSI in run.modalities else None
            omics = self._omics_frame if tabular else None
            self._fold = (key, run.data(patients, omics, wsi, self.omics))
        return self._fold[1]

    def n_test(self, k: int) -> int:
        from healnet.survival.labels import load_labels
        from healnet.survival.splits import fold_ids, load_fold

        ids = set(fold_ids(load_fold(self.fold_files[k]), "test"))
        return len(ids & set(load_labels(self.labels).index))

    def slide_paths(self) -> dict[str, str]:
        """slide_id -> slide file of the sample sheet (none without a sheet)."""
        if self.sheet is None:
            return {}
        from healnet.sheets import read_sample_sheet

        sheet = read_sample_sheet(self.sheet, check_files=False)
        return dict(zip(sheet["slide_id"].astype(str), sheet["path"].astype(str)))
