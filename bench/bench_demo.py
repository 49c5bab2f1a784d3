"""Benchmark: generate the default demo cohort (target < 60 s) and check that its slide signal
reaches the features the pipeline uses.

1. Runs `healnet demo-cohort` with the `demo` section of config.yaml into a temporary folder (as the
   rule does); prints patients, slides, wall time and disk footprint.
2. Samples up to `PATCHES` 224-px tissue patches at 0.5 um/px per slide (448 px of the 0.25 um/px
   SVS, resized), embeds them with a RANDOM-INIT ResNet50 truncated after layer3 + average pooling
   (the demo encoder), averages per patient, and reports the Spearman correlation with the planted
   `risk_wsi` of (a) the nuclear fraction of the pixels and (b) a leave-one-out ridge regression on
   the features. Exits 1 when generation takes >= 60 s or either correlation is below 0.6.
Run: `python bench/bench_demo.py`.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET_S = 60.0
PATCHES = 4
MIN_RHO = 0.6


def sample_patches(path: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """Up to n RGB patches (224 x 224 at 0.5 um/px) lying fully in tissue."""
    import cv2
    import openslide

    with openslide.OpenSlide(path) as slide:
        mpp = float(slide.properties["openslide.mpp-x"])
        size0 = int(round(112.0 / mpp))  # 112 um
        level = slide.get_best_level_for_downsample(8.0 / mpp)
        down = slide.level_downsamples[level]
        thumb = np.asarray(slide.read_region((0, 0), level, slide.level_dimensions[level]).convert("RGB"))
        tissue = thumb.min(axis=-1) < 215
        step = size0 / down
        cells = [
            (int(x * down), int(y * down))
            for y in np.arange(0, tissue.shape[0] - step, step)
            for x in np.arange(0, tissue.shape[1] - step, step)
            if tissue[int(y) : int(y + step), int(x) : int(x + step)].mean() > 0.9
        ]
        pick = rng.permutation(len(cells))[:n]
        out = []
        for i in pick:
            region = np.asarray(slide.read_region(cells[i], 0, (size0, size0)).convert("RGB"))
            out.append(cv2.resize(region, (224, 224), interpolation=cv2.INTER_AREA))
    return np.stack(out) if out else np.zeros((0, 224, 224, 3), np.uint8)


def loo_ridge(x: np.ndarray, y: np.ndarray, alpha: float = 10.0) -> np.ndarray:
    """Leave-one-out predictions of a ridge regression on standardised features."""
    pred = np.empty_like(y)
    for i in range(len(y)):
        tr = np.arange(len(y)) != i
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
        xt = (x[tr] - mu) / sd
        w = np.linalg.solve(xt.T @ xt + alpha * np.eye(x.shape[1]), xt.T @ (y[tr] - y[tr].mean()))
        pred[i] = ((x[i] - mu) / sd) @ w + y[tr].mean()
    return pred


def main() -> int:
    import timm
    import torch
    from scipy.stats import spearmanr

    from healnet.config import Demo
    from healnet.demo.slides import nuclear_fraction

    demo = yaml.safe_load((REPO / "config.yaml").read_text()).get("demo", {})
    with tempfile.TemporaryDirectory() as tmp:
        outdir = Path(tmp) / "demo"
        start = time.perf_counter()
        subprocess.run(
            [str(BIN / "healnet"), "demo-cohort", "--outdir", str(outdir), "--params", Demo(**demo).model_dump_json()],
            check=True,
            capture_output=True,
            text=True,
        )
        gen_s = time.perf_counter() - start
        sheet = pd.read_csv(outdir / "slides.tsv", sep="\t")
        truth = pd.read_csv(outdir / "truth.tsv", sep="\t").set_index("case_id")
        disk = sum(f.stat().st_size for f in outdir.rglob("*") if f.is_file())
        print(f"demo cohort: {len(truth)} patients, {len(sheet)} slides, {gen_s:.1f} s, {disk / 1e6:.1f} MB")

        torch.manual_seed(0)
        model = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=(3,)).eval()
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        rng = np.random.default_rng(0)
        feats, fracs = {}, {}
        start = time.perf_counter()
        for case_id, path in zip(sheet["case_id"], sheet["path"]):
            patches = sample_patches(path, rng, PATCHES)
            if not len(patches):
                continue
            x = (torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255 - mean) / std
            with torch.inference_mode():
                f = model(x)[0].mean(dim=(2, 3)).numpy()
            feats.setdefault(case_id, []).append(f)
            fracs.setdefault(case_id, []).append([nuclear_fraction(p) for p in patches])
        cases = sorted(feats)
        x = np.stack([np.concatenate(feats[c]).mean(0) for c in cases])
        frac = np.array([np.mean(np.concatenate(fracs[c])) for c in cases])
        risk = truth.loc[cases, "risk_wsi"].to_numpy()
        rho_frac = spearmanr(frac, risk).statistic
        rho_feat = spearmanr(loo_ridge(x, risk), risk).statistic
        print(
            f"random-init ResNet50-layer3 on {sum(len(v) for v in feats.values())} slides of {len(cases)} patients "
            f"({time.perf_counter() - start:.1f} s): Spearman with risk_wsi: nuclear fraction {rho_frac:.2f}, "
            f"leave-one-out ridge on features {rho_feat:.2f}"
        )
    ok = gen_s < TARGET_S and rho_frac >= MIN_RHO and rho_feat >= MIN_RHO
    print("OK" if ok else f"FAIL (targets: < {TARGET_S:.0f} s, Spearman >= {MIN_RHO})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
