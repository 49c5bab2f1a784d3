"""Scoring patients with a trained run: `load_run(path).predict(...)`, `predict`, `load_model`.

A run's checkpoint carries everything fitted on its fold's training patients (see `healnet.runs`):
the omics transform (feature list and scaling statistics), the survival bin edges, the WSI centre
(a buffer of the model), the model spec and the encoder its feature stores must come from. So a run
folder scores new patients from raw inputs (an omics matrix or the TCGA clinical + omics table, and
feature stores with their sample sheet) with nothing else, wherever the folder is copied to.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from healnet.models import build_model
from healnet.survival.labels import assign_bins
from healnet.survival.loss import nll_loss
from healnet.survival.metrics import risk_from_survival, survival_from_logits
from healnet.training.data import WSI, FoldData, WsiBags, fold_data, make_batch, read_bags

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    case_ids: list[str]
    surv: np.ndarray  # (n, K)
    risk: np.ndarray  # (n,)
    loss: float
    modalities: list[str]  # per patient, "+"-joined modalities present

    def frame(self, data: FoldData, indices: np.ndarray) -> pd.DataFrame:
        df = pd.DataFrame({"case_id": self.case_ids, "risk": self.risk})
        for j in range(self.surv.shape[1]):
            df[f"surv_{j}"] = self.surv[:, j]
        df["modalities"] = self.modalities
        df["event"] = data.event[indices]
        df["time"] = data.time[indices]
        df["bin"] = data.bins[indices]
        return df


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    data: FoldData,
    indices: np.ndarray,
    modalities: Sequence[str],
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    present: dict[str, np.ndarray] | None = None,
    alpha: float = 0.0,
) -> Predictions:
    """Survival, risk and mean NLL for `indices`, all patches of every bag (no cap)."""
    model.eval()
    survs, losses = [], []
    for start in range(0, len(indices), batch_size):
        batch = make_batch(data, indices[start : start + batch_size], modalities, present=present, device=device)
        logits = model(batch)
        losses.append(float(nll_loss(logits, batch["bins"], batch["censorship"], alpha, reduction="sum")))
        survs.append(survival_from_logits(logits).float().cpu().numpy())
    surv = np.concatenate(survs) if survs else np.zeros((0, data.n_bins))
    pres = {m: (present[m] if present is not None and m in present else data.present(m))[indices] for m in modalities}
    mods = ["+".join(m for m in modalities if pres[m][i]) for i in range(len(indices))]
    return Predictions(
        [data.case_ids[i] for i in indices],
        surv,
        risk_from_survival(surv),
        sum(losses) / max(len(indices), 1),
        mods,
    )


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained model from checkpoint.pt; returns (model in eval mode, checkpoint dict)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; run `healnet train` for this model and fold")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = build_model(ckpt["architecture"], ckpt["input_dims"], ckpt["n_bins"], ckpt["params"], ckpt["feature_names"])
    if "wsi_center" in ckpt["state_dict"]:
        attach_wsi_center(model, ckpt["state_dict"]["wsi_center"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt


def attach_wsi_center(model: torch.nn.Module, center: np.ndarray | torch.Tensor) -> torch.nn.Module:
    """Make `model` subtract `center` (D,) from every real patch feature of its input bags (padding
    stays 0). The centre is a buffer, so it is saved in the checkpoint's state dict, and a forward
    pre-hook, so every caller of the model (training, prediction, evaluation, inspection) centres alike."""
    center = (
        center.detach().cpu() if isinstance(center, torch.Tensor) else np.asarray(center)
    )  # a checkpoint mapped to a GPU
    model.register_buffer("wsi_center", torch.as_tensor(center, dtype=torch.float32))

    def center_bags(module: torch.nn.Module, args: tuple) -> tuple:
        batch = args[0]
        if WSI not in batch:
            return args
        mask = batch[f"{WSI}_mask"].unsqueeze(-1).to(batch[WSI].dtype)
        return ({**batch, WSI: (batch[WSI] - module.wsi_center) * mask}, *args[1:])

    model.register_forward_pre_hook(center_bags)
    return model


@dataclass
class Run:
    """A trained run: the model (eval mode) and the checkpoint's metadata (without the state dict)."""

    path: Path
    model: torch.nn.Module
    info: dict
    device: str = "cpu"

    @property
    def modalities(self) -> list[str]:
        return list(self.info["modalities"])

    @property
    def edges(self) -> np.ndarray:
        return np.asarray(self.info["edges"], dtype=float)

    @property
    def batch_size(self) -> int:
        return int(self.info["training"].get("eval_batch_size", 8))

    @property
    def transform(self):
        """The omics transform fitted on the fold's training patients (None: the model uses no omics)."""
        from healnet.omics.preprocess import OmicsTransform

        state = self.info.get("omics_transform")
        return None if state is None else OmicsTransform.from_state(state)

    def check_encoder(self, wsi: WsiBags | None) -> None:
        """The feature stores must come from the encoder the model was trained on."""
        want, got = self.info.get("encoder"), wsi.encoder if wsi is not None else None
        if want and got and want.get("encoder") != got.get("encoder"):
            raise ValueError(
                f"run {self.path} was trained on features of encoder {want.get('encoder')!r}, but the feature "
                f"stores given come from {got.get('encoder')!r}; extract them with {want.get('encoder')!r}"
            )
        dim = self.info["input_dims"].get(WSI)
        if dim is not None and wsi is not None and wsi.slides and wsi.feature_dim != dim:
            raise ValueError(
                f"run {self.path} expects {dim}-d patch features, the feature stores hold {wsi.feature_dim}-d"
            )

    def data(
        self,
        patients: pd.DataFrame,
        omics: pd.DataFrame | None,
        wsi: WsiBags | None,
        source: str | Path | None = "omics",
    ) -> FoldData:
        """FoldData of `patients` (case_id, split, survival_months, event) through the carried omics
        transform and bin edges (nothing refitted); a modality the inputs lack is absent for everyone."""
        self.check_encoder(wsi)
        transform = self.transform if omics is not None else None
        if omics is not None and transform is None and any(m != WSI for m in self.modalities):
            raise ValueError(
                f"run {self.path} reads {self.modalities} but carries no omics transform (trained by an older "
                "healnet); retrain it (rule train)"
            )
        bins = assign_bins(patients["survival_months"].to_numpy(dtype=float), self.edges)
        data = fold_data(patients, self.edges, bins, omics, transform, wsi, source)
        n = len(data.case_ids)
        for m in self.modalities:
            if m == WSI and data.wsi is None:
                data.wsi = WsiBags({}, self.info["input_dims"][WSI], loader=None)
            elif m != WSI and m not in data.tabular:
                data.tabular[m] = np.zeros((n, self.info["input_dims"][m]), dtype=np.float32)
                data.tabular_present[m] = np.zeros(n, dtype=bool)
        return data

    def predict_data(self, data: FoldData, indices: np.ndarray, present: dict[str, np.ndarray] | None = None):
        """`predict` with the run's modalities, evaluation batch size and device."""
        return predict(self.model, data, indices, self.modalities, self.batch_size, self.device, present=present)

    def predict(
        self,
        omics: pd.DataFrame | str | Path | None = None,
        features: Sequence[str | Path] = (),
        sheet: str | Path | None = None,
        case_ids: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Risk and survival per bin of new patients: case_id, risk, surv_<j>, modalities.

        `omics`: an omics matrix (`omics.tsv.gz` of the omics stage, or a frame indexed by case_id)
        or the clinical + omics table in the TCGA format (`.csv`, `.zip`), read with the omics config
        the run was trained with; `features` + `sheet`: the patients' feature stores. `case_ids`:
        whom to score (default: every patient of the inputs). Patients with none of the model's
        modalities are left out (logged).
        """
        frame, source = self._omics_frame(omics)
        wsi = read_bags(features, sheet) if len(features) else None
        if case_ids is None:
            seen = list(frame.index) if frame is not None else []
            known = set(seen)
            case_ids = seen + [c for c in (wsi.slides if wsi is not None else {}) if c not in known]
        patients = pd.DataFrame(
            {"case_id": [str(c) for c in case_ids], "split": "test", "survival_months": np.nan, "event": 0}
        )
        data = self.data(patients, frame, wsi, source)
        idx = data.split_indices("test", self.modalities)
        pred = self.predict_data(data, idx)
        return pred.frame(data, idx)[["case_id", "risk", *[f"surv_{j}" for j in range(data.n_bins)], "modalities"]]

    def _omics_frame(self, omics) -> tuple[pd.DataFrame | None, str | Path | None]:
        if omics is None or all(m == WSI for m in self.modalities):  # the model reads no omics
            return None, "omics"
        if isinstance(omics, pd.DataFrame):
            return omics, "omics"
        from healnet.training.data import read_omics

        path = Path(omics)
        if path.name.endswith((".tsv", ".tsv.gz")):
            return read_omics(path), path
        from healnet.config import Omics
        from healnet.omics.tables import read_omics_table

        patients = read_omics_table(path, Omics.model_validate(self.info["omics"])).patients
        patients.index = patients.index.astype(str)
        return patients, path


def load_run(path: str | Path, device: torch.device | str = "cpu") -> Run:
    """The run in folder `path` (or its checkpoint.pt), ready to `.predict(...)`."""
    from healnet.runs import CHECKPOINT

    path = Path(path)
    folder = path.parent if path.is_file() else path
    model, ckpt = load_model(folder / CHECKPOINT, device)
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return Run(folder, model, info, str(device))
