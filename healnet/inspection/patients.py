"""One inspection path: pick test patients by predicted risk, re-run their run with attention, write
patch-attention heatmaps and top omic features. The cohort report (`inspect_models`, the
`inspect/` folder of `healnet evaluate`) and the paper figure (`healnet.paper.inspection`) use it.

A patient is picked from a model's pooled first-seed test predictions over all folds, among those
with every modality of the model when there are any (`pick_patients`). Files, with `stem` the
caller's prefix: `<stem>_<slide>_heatmap.png` per slide, `<stem>_<modality>_top_features.tsv` (and
`.png`, the paper's bar plot).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from healnet.io import write_tsv

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["model", "rank", "case_id", "fold", "risk", "modality", "kind", "file"]
RANKS = {"highest_risk": "idxmax", "lowest_risk": "idxmin"}


@dataclass
class Attention:
    """One patient's attention under one run: scores per modality (per token) and the inputs."""

    model: str
    rank: str
    case: str
    fold: int
    risk: float
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> (N tokens,)
    values: dict[str, np.ndarray] = field(default_factory=dict)  # tabular modality -> model input (F,)
    feature_names: dict[str, list[str]] = field(default_factory=dict)
    bags: list = field(default_factory=list)  # the patient's SlideBags, in the order of scores["wsi"]

    @property
    def base(self) -> dict:
        return {"model": self.model, "rank": self.rank, "case_id": self.case, "fold": self.fold, "risk": self.risk}

    def title(self) -> str:
        return f"{self.model}: {self.case} ({self.rank.replace('_', ' ')}, fold {self.fold}, risk {self.risk:.3f})"


def pick_patients(
    predictions: pd.DataFrame, modalities: Sequence[str], ranks: Sequence[str] = ("highest_risk",)
) -> dict[str, pd.Series]:
    """rank -> row of pooled test predictions (with `fold`), preferring patients with every modality."""
    if predictions.empty:
        raise ValueError("no test predictions to pick a patient from")
    full = predictions[predictions["modalities"] == "+".join(modalities)]
    pool = full if len(full) else predictions
    return {rank: pool.loc[getattr(pool["risk"], RANKS[rank])()] for rank in ranks}


def returns_attention(model) -> bool:
    return "return_attention" in inspect.signature(model.forward).parameters


def attend(cohort, model: str, ranks: Sequence[str]) -> list[Attention]:
    """The picked patients of `model` (a run name of `cohort`, a `CohortRuns`) with their attention;
    empty when the model returns none."""
    import torch

    from healnet.inspection.attention import mean_over_layers
    from healnet.training.data import WSI, make_batch

    pooled = cohort.pooled_predictions(model)
    if pooled.empty:
        return []
    mods = cohort.info(model, int(pooled["fold"].iloc[0]))["modalities"]
    out = []
    for rank, row in pick_patients(pooled, mods, ranks).items():
        k, case = int(row["fold"]), str(row["case_id"])
        run = cohort.run(model, k)
        if not returns_attention(run.model):
            log.info("model %s (%s) returns no attention: not inspected", model, run.info["architecture"])
            return []
        log.info(
            "inspecting %s: %s patient %s (fold %d, risk %.4f, modalities %s)",
            model,
            rank,
            case,
            k,
            row["risk"],
            row["modalities"],
        )
        data = cohort.fold(k, run)
        batch = make_batch(data, [data.index[case]], mods, device=cohort.device)
        with torch.no_grad():
            _, attn = run.model(batch, return_attention=True)
        a = Attention(model, rank, case, k, float(row["risk"]), feature_names=run.info["feature_names"])
        for m in mods:
            if bool(batch["present"][m][0]):
                a.scores[m] = mean_over_layers(attn[m])[0]
                if m == WSI:
                    a.bags = data.wsi.slide_bags(case)
                else:
                    a.values[m] = batch[m][0].cpu().numpy()
        out.append(a)
    return out


def write_maps(
    a: Attention, out: Path, stem: str, eval_cfg, slide_paths: dict[str, str], plot_features: bool = False
) -> list[dict]:
    """Heatmaps per slide and top omic features (TSV, with `plot_features` also a bar plot) of one
    patient; its index rows."""
    from healnet.inspection.attention import plot_top_features, save_heatmap, top_features
    from healnet.training.data import WSI

    index = []
    for m, scores in a.scores.items():
        if m == WSI:
            start = 0
            for bag in a.bags:
                s = scores[start : start + len(bag.features)]
                start += len(bag.features)
                name = f"{stem}_{bag.slide_id}_heatmap.png"
                save_heatmap(
                    out / name,
                    bag.coords,
                    s,
                    level0_size(bag),
                    slide_paths.get(bag.slide_id),
                    f"{a.title()}, {bag.slide_id}: mean patch attention",
                    eval_cfg.inspect_thumbnail_px,
                )
                index.append({**a.base, "modality": m, "kind": "heatmap", "file": name})
            continue
        names = a.feature_names.get(m) or [f"{m}_{i}" for i in range(len(scores))]
        if len(names) != len(scores):  # tokens are groups of features (omics_tokens), not features
            log.info(
                "model %s: %d %s tokens for %d features: no per-feature ranking", a.model, len(scores), m, len(names)
            )
            continue
        top = top_features(scores, names, a.values[m], eval_cfg.inspect_top_features)
        name = f"{stem}_{m}_top_features"
        write_tsv(top, out / f"{name}.tsv", float_format="%.6g")
        index.append({**a.base, "modality": m, "kind": "top_features", "file": f"{name}.tsv"})
        if plot_features:
            plot_top_features(top, f"{a.title()}, top {len(top)} {m} features", out / f"{name}.png")
            index.append({**a.base, "modality": m, "kind": "top_features", "file": f"{name}.png"})
    return index


def level0_size(bag) -> int:
    """The level-0 px one patch of the slide covers, as its feature store records it (never guessed:
    a wrong size would paint the heatmap at another magnification)."""
    if bag.patch_size_level0 is None:
        raise ValueError(
            f"feature store of slide {bag.slide_id} records no patch_size_level0 (nor patch_size, target_mpp "
            "and mpp to derive it); rerun the patches and features rules for it"
        )
    return int(bag.patch_size_level0)


def inspect_models(cohort, models: Sequence[str], eval_cfg, out_dir: str | Path) -> pd.DataFrame:
    """The cohort report's `inspect/`: the highest- and lowest-risk test patients of each model;
    files prefixed `<model>_<rank>_<case>`, listed in index.tsv."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slide_paths = cohort.slide_paths()
    index = []
    for model in models:
        for a in attend(cohort, model, ("highest_risk", "lowest_risk")):
            index += write_maps(a, out_dir, f"{model}_{a.rank}_{a.case}", eval_cfg, slide_paths)
    table = pd.DataFrame(index, columns=INDEX_COLUMNS)
    write_tsv(table, out_dir / "index.tsv")
    return table
