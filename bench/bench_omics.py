"""Benchmark: the whole omics / labels / splits stage on the real BRCA table (target < 10 s).

Times the three CLI commands as the rules run them (process start-up included) and, in-process,
fitting + applying the per-fold omics transform for all five folds. Prints one line per step.
Exits 1 when the stage takes 10 s or more. Run: `python bench/bench_omics.py [cohort]`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HEALNET_SHARED_DATA", REPO.parent / "shared" / "data")) / "tcga"
BIN = Path(sys.executable).parent
TARGET_S = 10.0


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main(cohort: str = "brca") -> int:
    table = DATA / cohort / "clinical_omics.csv.zip"
    split_files = sorted(str(p) for p in (DATA / cohort / "splits").glob("splits_*.csv"))
    if not table.exists():
        print(f"bench_omics: {table} not found (set HEALNET_SHARED_DATA)", file=sys.stderr)
        return 1
    healnet = str(BIN / "healnet")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        steps = {
            "omics": timed([healnet, "omics", "--table", str(table), "--output", str(out / "omics.tsv.gz")]),
            "labels": timed([healnet, "labels", "--table", str(table), "--output", str(out / "labels.tsv")]),
            "splits (5 folds)": timed(
                [
                    healnet,
                    "splits",
                    "--labels",
                    str(out / "labels.tsv"),
                    "--split-files",
                    *split_files,
                    "--outdir",
                    str(out / "splits"),
                ]
            ),
        }
        from healnet.config import Omics
        from healnet.omics.preprocess import fit_omics_transform, load_omics
        from healnet.survival.splits import fold_ids, load_fold

        start = time.perf_counter()
        omics = load_omics(out / "omics.tsv.gz")
        shapes = {}
        for k in range(len(split_files)):
            fold = load_fold(out / "splits" / f"fold{k}.tsv")
            transform = fit_omics_transform(omics, fold_ids(fold, "train"), Omics())
            shapes = {t: a.shape[1] for t, a in transform.transform(omics).items()}
        per_fold = (time.perf_counter() - start) / max(len(split_files), 1)
    total = sum(steps.values())
    print(
        f"omics stage on {cohort.upper()} ({omics.shape[0]} patients, {omics.shape[1]} features), "
        f"{os.cpu_count()} CPU(s):"
    )
    for name, seconds in steps.items():
        print(f"  healnet {name:<17} {seconds:6.2f} s")
    print(f"  stage total             {total:6.2f} s (target < {TARGET_S:.0f} s)")
    print(f"  per-fold transform      {per_fold:6.2f} s (fit on train + transform all patients; last fold {shapes})")
    return 0 if total < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
