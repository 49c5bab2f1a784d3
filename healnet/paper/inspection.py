"""Figure 3 of the paper: what the model attends to for a high-risk patient of a cohort.

The patient is the highest-risk held-out patient over all folds of `paper.inspect_model`, among those
with every modality of the model when there are any. Attention scores come from the model itself
(`forward(batch, return_attention=True)`: cross-attention of the latents on each token, mean over
heads, latents and fusion layers; `healnet.inspection.attention`), on all of the patient's patches.
Patient choice, re-run, heatmaps and top features are the cohort report's (`healnet.inspection.patients`);
this module adds the top patches.

Written per cohort into `results/paper/inspection/{cohort}/`:
- `<case>_<slide>_heatmap.png`: patch attention over the slide thumbnail (min-max within the slide);
- `<case>_<modality>_top_features.tsv` / `.png`: the omic features with the highest attention;
- `<case>_top_patches.png`: the `paper.top_patches` highest-attention patches in one panel, and each
  as `<case>_tile<rank>_<slide>_x<X>_y<Y>.png` (the patch as the encoder saw it: level-0 region
  area-resampled to `patching.patch_size` px) for post-hoc analysis; `tiles.tsv` lists them;
- `index.tsv`: every file with its patient, fold, risk and modality (`INDEX_COLUMNS`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from healnet.inspection.patients import INDEX_COLUMNS, attend, level0_size, write_maps
from healnet.io import atomic_path, write_tsv

log = logging.getLogger(__name__)

TILE_COLUMNS = ["rank", "slide_id", "x", "y", "size_level0", "attention", "file"]


def top_patches(bags, scores: np.ndarray, k: int) -> pd.DataFrame:
    """The k highest-attention patches over a patient's slides (`scores` in slide-bag order)."""
    n = sum(len(b.features) for b in bags)
    if len(scores) != n:
        raise ValueError(f"{len(scores)} patch attention scores for {n} patches")
    parts = [
        pd.DataFrame({"slide_id": b.slide_id, "x": b.coords[:, 0], "y": b.coords[:, 1], "size_level0": level0_size(b)})
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


def inspect_cohort(model: str | None, cohort, eval_cfg, paper_cfg, patching_cfg, out_dir: str | Path) -> pd.DataFrame:
    """Fill `out_dir` (atomically) for the cohort's highest-risk patient; returns index.tsv's table.

    `cohort` is a `healnet.evaluate.cohort.CohortRuns`. Nothing but an empty index when `model` is None
    or returns no attention.
    """
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        index = _inspect(model, cohort, eval_cfg, paper_cfg, patching_cfg, tmp) if model else []
        if model is None:
            log.info("paper.inspect_model is null: no inspection")
        write_tsv(pd.DataFrame(index, columns=INDEX_COLUMNS), tmp / "index.tsv")
    return pd.DataFrame(index, columns=INDEX_COLUMNS)


def _inspect(model: str, cohort, eval_cfg, paper_cfg, patching_cfg, out: Path) -> list[dict]:
    from healnet.training.data import WSI

    slide_paths = cohort.slide_paths()
    index = []
    for a in attend(cohort, model, ("highest_risk",)):
        index += write_maps(a, out, a.case, eval_cfg, slide_paths, plot_features=True)
        if WSI in a.scores:
            tiles = save_tiles(
                top_patches(a.bags, a.scores[WSI], paper_cfg.top_patches),
                slide_paths,
                a.case,
                patching_cfg.patch_size,
                out,
            )
            write_tsv(tiles, out / "tiles.tsv", float_format="%.6g")
            index += [{**a.base, "modality": WSI, "kind": "tile", "file": f} for f in tiles["file"] if f]
            if (out / f"{a.case}_top_patches.png").exists():
                index.append({**a.base, "modality": WSI, "kind": "top_patches", "file": f"{a.case}_top_patches.png"})
    return index
