"""Figure 3 of the paper: what the model attends to for a high-risk patient of a cohort.

The patient is the highest-risk held-out patient over all folds of `paper.inspect_model`, among those
with every modality of the model when there are any. Attention scores come from the model itself
(`forward(batch, return_attention=True)`: cross-attention of the latents on each token, mean over
heads, latents and fusion layers; `healnet.inspect.attention`), on all of the patient's patches.

Written per cohort into `results/paper/inspection/{cohort}/`:
- `<case>_<slide>_heatmap.png`: patch attention over the slide thumbnail (min-max within the slide);
- `<case>_<modality>_top_features.tsv` / `.png`: the omic features with the highest attention;
- `<case>_top_patches.png`: the `paper.top_patches` highest-attention patches in one panel, and each
  as `<case>_tile<rank>_<slide>_x<X>_y<Y>.png` (the patch as the encoder saw it: level-0 region
  area-resampled to `patching.patch_size` px) for post-hoc analysis; `tiles.tsv` lists them;
- `index.tsv`: every file with its patient, fold, risk and modality.
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from healnet.io import atomic_path, write_tsv

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["model", "case_id", "fold", "risk", "modality", "kind", "file"]
TILE_COLUMNS = ["rank", "slide_id", "x", "y", "size_level0", "attention", "file"]


def pick_patient(predictions: pd.DataFrame, modalities: Sequence[str]) -> pd.Series:
    """The highest-risk row of pooled test predictions (with `fold`), preferring every modality present."""
    if predictions.empty:
        raise ValueError("no test predictions to pick a patient from")
    full = predictions[predictions["modalities"] == "+".join(modalities)]
    pool = full if len(full) else predictions
    return pool.loc[pool["risk"].idxmax()]


def top_patches(bags, scores: np.ndarray, k: int) -> pd.DataFrame:
    """The k highest-attention patches over a patient's slides (`scores` in slide-bag order)."""
    n = sum(len(b.features) for b in bags)
    if len(scores) != n:
        raise ValueError(f"{len(scores)} patch attention scores for {n} patches")
    parts = [
        pd.DataFrame({"slide_id": b.slide_id, "x": b.coords[:, 0], "y": b.coords[:, 1],
                      "size_level0": b.patch_size_level0 or 224})
        for b in bags
    ]
    df = pd.concat(parts, ignore_index=True).assign(attention=np.asarray(scores, dtype=float))
    df = df.sort_values("attention", ascending=False, kind="stable").head(k).reset_index(drop=True)
    return df.assign(rank=np.arange(1, len(df) + 1))


def read_tile(slide_path: str | Path, x: int, y: int, size_level0: int, out_px: int) -> np.ndarray:
    """One patch as RGB uint8 (out_px, out_px, 3): the level-0 region, area-resampled."""
    from healnet.wsi.slide import Slide, area_resize

    with Slide(slide_path) as slide:
        rgb = slide.read((int(x), int(y)), 0, (int(size_level0), int(size_level0)))
    return area_resize(rgb, (out_px, out_px))


def save_tiles(tiles: pd.DataFrame, slide_paths: dict[str, str], case: str, out_px: int, out_dir: Path) -> pd.DataFrame:
    """Write each tile as PNG and a panel of all of them; unreadable slides are logged and skipped."""
    from healnet.io import write_png

    files, images = [], []
    for _, t in tiles.iterrows():
        name = f"{case}_tile{int(t['rank']):02d}_{t['slide_id']}_x{int(t['x'])}_y{int(t['y'])}.png"
        try:
            img = read_tile(slide_paths[t["slide_id"]], t["x"], t["y"], t["size_level0"], out_px)
        except (KeyError, RuntimeError) as err:  # SlideError is a RuntimeError
            log.warning("tile %s of %s not saved: %s", t["rank"], t["slide_id"], err)
            files.append("")
            continue
        write_png(img, out_dir / name)
        files.append(name)
        images.append((img, f"#{int(t['rank'])} {t['attention']:.3g}"))
    if images:
        _panel(images, f"{case}: highest-attention patches", out_dir / f"{case}_top_patches.png")
    return tiles.assign(file=files)[TILE_COLUMNS]


def _panel(images: list[tuple[np.ndarray, str]], title: str, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(images))
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (img, label) in zip(axes.ravel(), images):
        ax.imshow(img)
        ax.set_title(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_top_features(features: pd.DataFrame, title: str, out_png: str | Path) -> None:
    """Horizontal bars of attention per feature (rank 1 on top), coloured by the input value's sign."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = features.iloc[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(df) + 1.2), dpi=100)
    colours = ["#c0392b" if v > 0 else "#2e86c1" for v in df.get("value", pd.Series(0.0, index=df.index))]
    ax.barh(df["feature"], df["attention"], color=colours)
    ax.set_xlabel("attention (mean over heads, latents, layers)")
    ax.set_title(title + "\n(red: input above 0, blue: at or below 0)", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def inspect_cohort(model: str | None, models_dir: str | Path, cohort, sheet: str | Path | None,
                   feature_stores: Sequence[str | Path], eval_cfg, paper_cfg, patching_cfg, out_dir: str | Path,
                   device: str = "cpu") -> pd.DataFrame:
    """Fill `out_dir` (atomically) for the cohort's highest-risk patient; returns index.tsv's table.

    `cohort` is a `healnet.evaluate.Cohort`. Nothing but an empty index when `model` is None or
    returns no attention.
    """
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        index = _inspect(model, Path(models_dir), cohort, sheet, eval_cfg, paper_cfg, patching_cfg, tmp, device)
        write_tsv(pd.DataFrame(index, columns=INDEX_COLUMNS), tmp / "index.tsv")
    return pd.DataFrame(index, columns=INDEX_COLUMNS)


def _inspect(model, models_dir: Path, cohort, sheet, eval_cfg, paper_cfg, patching_cfg, out: Path, device: str) -> list[dict]:
    import torch

    from healnet.evaluate import first_seed
    from healnet.inspect.attention import mean_over_layers, save_heatmap, top_features
    from healnet.training.data import WSI, make_batch
    from healnet.training.loop import load_model

    if model is None:
        log.info("paper.inspect_model is null: no inspection")
        return []
    preds = pd.concat(
        [first_seed(pd.read_csv(models_dir / model / f"fold{k}" / "predictions.tsv", sep="\t", dtype={"case_id": str})).assign(fold=k)
         for k in sorted(cohort.fold_files)],
        ignore_index=True,
    )
    first = min(cohort.fold_files)
    _, ckpt = load_model(models_dir / model / f"fold{first}" / "checkpoint.pt", device)
    mods = ckpt["modalities"]
    row = pick_patient(preds, mods)
    k, case, risk = int(row["fold"]), str(row["case_id"]), float(row["risk"])
    net, ckpt = load_model(models_dir / model / f"fold{k}" / "checkpoint.pt", device)
    if "return_attention" not in inspect.signature(net.forward).parameters:
        log.warning("model %s (%s) returns no attention: nothing to inspect", model, ckpt["architecture"])
        return []
    log.info("inspecting %s: patient %s (fold %d, risk %.4f, modalities %s)", model, case, k, risk, row["modalities"])
    data = cohort.fold(k)
    batch = make_batch(data, [data.index[case]], mods, device=device)
    with torch.no_grad():
        _, attn = net(batch, return_attention=True)
    slide_paths: dict[str, str] = {}
    if sheet is not None:
        from healnet.sheets import read_sample_sheet

        s = read_sample_sheet(sheet, check_files=False)
        slide_paths = dict(zip(s["slide_id"].astype(str), s["path"].astype(str)))
    base = {"model": model, "case_id": case, "fold": k, "risk": risk}
    index = []
    for m in mods:
        if not bool(batch["present"][m][0]):
            continue
        scores = mean_over_layers(attn[m])[0]
        if m == WSI:
            bags = data.wsi.slide_bags(case)
            start = 0
            for bag in bags:
                s = scores[start : start + len(bag.features)]
                start += len(bag.features)
                name = f"{case}_{bag.slide_id}_heatmap.png"
                save_heatmap(out / name, bag.coords, s, bag.patch_size_level0 or patching_cfg.patch_size,
                             slide_paths.get(bag.slide_id),
                             f"{model}: {case} (fold {k}, risk {risk:.3f}), {bag.slide_id}: mean patch attention",
                             eval_cfg.inspect_thumbnail_px)
                index.append({**base, "modality": m, "kind": "heatmap", "file": name})
            tiles = save_tiles(top_patches(bags, scores, paper_cfg.top_patches), slide_paths, case,
                               patching_cfg.patch_size, out)
            write_tsv(tiles, out / "tiles.tsv", float_format="%.6g")
            index += [{**base, "modality": m, "kind": "tile", "file": f} for f in tiles["file"] if f]
            if (out / f"{case}_top_patches.png").exists():
                index.append({**base, "modality": m, "kind": "top_patches", "file": f"{case}_top_patches.png"})
        else:
            names = ckpt["feature_names"].get(m) or [f"{m}_{i}" for i in range(len(scores))]
            if len(names) != len(scores):  # tokens are groups of features (omics_tokens), not features
                log.info("model %s: %d %s tokens for %d features: no per-feature ranking", model, len(scores), m, len(names))
                continue
            top = top_features(scores, names, batch[m][0].cpu().numpy(), eval_cfg.inspect_top_features)
            stem = f"{case}_{m}_top_features"
            write_tsv(top, out / f"{stem}.tsv", float_format="%.6g")
            plot_top_features(top, f"{model}: {case} (risk {risk:.3f}), top {len(top)} {m} features", out / f"{stem}.png")
            index += [{**base, "modality": m, "kind": "top_features", "file": f"{stem}.{ext}"} for ext in ("tsv", "png")]
    return index
