"""The model's explanation: attention on raw inputs, per patch (heatmap) and per omic feature.

Scores are the cross-attention weights of the latents on each token, mean over heads, latents and
fusion layers (`HEALNet.forward(..., return_attention=True)`). A heatmap paints each patch's score
over the slide thumbnail; the omic table ranks features by score.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from healnet.io import atomic_path

log = logging.getLogger(__name__)


def mean_over_layers(maps: list[torch.Tensor]) -> np.ndarray:
    """(B, N) per layer -> (B, N) mean over the layers (NaN rows stay NaN: modality absent)."""
    return torch.stack([m.float() for m in maps]).mean(dim=0).cpu().numpy()


def top_features(scores: np.ndarray, names: list[str], values: np.ndarray | None = None, k: int = 20) -> pd.DataFrame:
    """The k features with the highest attention: rank, feature, attention, value (model input)."""
    if len(scores) != len(names):
        raise ValueError(f"{len(scores)} attention scores for {len(names)} feature names")
    order = np.argsort(-scores, kind="stable")[:k]
    df = pd.DataFrame(
        {"rank": np.arange(1, len(order) + 1), "feature": [names[i] for i in order], "attention": scores[order]}
    )
    if values is not None:
        df["value"] = values[order]
    return df


def slide_thumbnail(
    path: str | Path | None, level0_size: tuple[int, int] | None, max_px: int
) -> tuple[np.ndarray, float]:
    """(RGB thumbnail, level-0 px per thumbnail px). A blank canvas when the slide cannot be read."""
    try:
        import openslide

        with openslide.OpenSlide(str(path)) as slide:
            w, h = slide.dimensions
            thumb = np.asarray(slide.get_thumbnail((max_px, max_px)).convert("RGB"))
        return thumb, w / thumb.shape[1]
    except Exception as err:  # noqa: BLE001 - any unreadable slide: draw on a blank canvas instead
        log.warning("slide %s not readable for the heatmap background (%s); using a blank canvas", path, err)
        w, h = level0_size or (max_px, max_px)
        scale = max(w, h) / max_px
        return np.full((max(1, int(h / scale)), max(1, int(w / scale)), 3), 255, np.uint8), scale


def save_heatmap(
    out_png: str | Path,
    coords: np.ndarray,
    scores: np.ndarray,
    patch_size_level0: int,
    slide_path: str | Path | None,
    title: str,
    max_px: int = 1024,
) -> None:
    """Paint each patch's attention (normalised to [0, 1] within the slide) over the thumbnail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    extent = (
        (int((coords[:, 0] + patch_size_level0).max()), int((coords[:, 1] + patch_size_level0).max()))
        if len(coords)
        else None
    )
    thumb, scale = slide_thumbnail(slide_path, extent, max_px)
    heat = np.full(thumb.shape[:2], np.nan, dtype=np.float32)
    lo, hi = float(np.nanmin(scores)), float(np.nanmax(scores))
    norm = (scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores)
    step = max(1, int(round(patch_size_level0 / scale)))
    for (x, y), v in zip(coords, norm):
        c0, r0 = int(x / scale), int(y / scale)
        heat[r0 : r0 + step, c0 : c0 + step] = v
    fig, ax = plt.subplots(figsize=(8, 8 * thumb.shape[0] / max(thumb.shape[1], 1)), dpi=100)
    ax.imshow(thumb)
    im = ax.imshow(heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.colorbar(im, ax=ax, fraction=0.03, label="attention (min-max within slide)")
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
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
