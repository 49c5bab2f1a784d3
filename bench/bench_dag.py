"""How long Snakemake takes to build the DAG of a large cohort (issue: linear DAG building).

For each size N, a cohort of N slides (copies of one small synthetic slide, each with a few bytes
appended so the sample sheet's duplicate check sees N files; one patient each) with a
matching clinical + omics table is dry-run for `results/bench{N}/cindex.tsv` (tissue, patches,
features of every slide, then omics, labels, splits, training, evaluation). Then the same cohort is
made to look finished (every output touched in DAG order) and `snakemake -n` must say "Nothing to be
done": the cost of a no-op call on a finished cohort. Prints seconds and seconds per slide.

    python bench/bench_dag.py                 # 100, 500, 2500 slides
    python bench/bench_dag.py --sizes 100 400 # other sizes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from healnet.wsi.synthetic import he_image, write_slide

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def make_cohort(workdir: Path, name: str, n: int, slide: Path, table: pd.DataFrame) -> dict:
    """A sheet of n slides (symlinks to `slide`) and a table of n patients cloned from `table`'s rows."""
    slides = workdir / "data" / name / "slides"
    slides.mkdir(parents=True)
    rows, table_rows = [], []
    for i in range(n):
        case = f"BENCH-{i:05d}"
        path = slides / f"{case}-DX1{slide.suffix}"
        path.write_bytes(slide.read_bytes() + case.encode())  # readers ignore trailing bytes
        rows.append({"case_id": case, "slide_id": path.stem, "path": str(path)})
        row = table.iloc[i % len(table)].copy()
        row["case_id"], row["slide_id"] = case, f"{case}-DX1.svs"
        table_rows.append(row)
    pd.DataFrame(rows).to_csv(workdir / "data" / name / "slides.tsv", sep="\t", index=False)
    pd.DataFrame(table_rows).to_csv(workdir / "data" / name / "clinical_omics.csv", index=False)
    return {
        "slides": f"data/{name}/slides.tsv",
        "clinical_omics": f"data/{name}/clinical_omics.csv",
        "encoder": "resnet50_trunc_random",
        "models": ["healnet"],
    }


def snakemake(workdir: Path, configfile: Path, target: str, *args: str) -> tuple[Timing, str]:
    cmd = [
        str(BIN / "snakemake"),
        target,
        "-s",
        str(REPO / "workflow/Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "8",
        f"--configfile={configfile}",
        *args,
    ]
    start, cpu0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    )
    took = Timing(time.perf_counter() - start, _children_cpu() - cpu0)
    if proc.returncode != 0:
        sys.exit(f"snakemake failed ({' '.join(cmd)}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return took, proc.stdout + proc.stderr


@dataclass
class Timing:
    wall: float
    cpu: float  # user + sys of the snakemake process: what a busy shared machine does not inflate

    def __str__(self) -> str:
        return f"{self.wall:.1f} ({self.cpu:.1f})"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def make_outputs(workdir: Path, configfile: Path, target: str) -> None:
    """Create every output of the DAG (empty), then let `--touch` order their times: a finished cohort."""
    _, out = snakemake(workdir, configfile, target, "--summary")
    for line in out.splitlines():
        path = line.split("\t")[0]
        if not path.startswith("results/"):
            continue
        path = workdir / path
        if path.suffix == ".zarr" or path.name == "inspect":
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    snakemake(workdir, configfile, target, "--touch")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 2500])
    ap.add_argument(
        "--finished",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time `snakemake -n` on a cohort whose outputs all exist",
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_dag_") as tmp:
        work = Path(tmp)
        src = work / "src"
        subprocess.run(
            [
                str(BIN / "healnet"),
                "demo-cohort",
                "--outdir",
                str(src),
                "--params",
                json.dumps({"n_patients": 6, "seed": 0}),
            ],
            check=True,
            capture_output=True,
        )
        # A small slide (~30 KB): every copy has the same size, so the duplicate check hashes them all.
        slide = work / "small.svs"
        write_slide(slide, he_image(896, 672, 0.5, seed=0), 0.5, downsamples=(1, 4))
        table = pd.read_csv(src / "clinical_omics.csv", index_col=0)
        cohorts = {f"bench{n}": make_cohort(work, f"bench{n}", n, slide, table) for n in args.sizes}
        shutil.copy(REPO / "config.yaml", work / "config.yaml")  # the workflow's defaults, read from the workdir
        configfile = work / "bench.yaml"
        configfile.write_text(json.dumps({"cohorts": cohorts}))

        print("seconds as wall (CPU of the snakemake process); ms/slide from wall")
        print(f"{'slides':>7} {'jobs':>6} {'dry run s':>14} {'ms/slide':>9}", end="")
        print(f" {'finished -n s':>14} {'ms/slide':>9}" if args.finished else "")
        base = None
        for n in args.sizes:
            target = f"results/bench{n}/cindex.tsv"
            took, out = snakemake(work, configfile, target, "-n", "--quiet", "rules")
            jobs = next((line.split()[-1] for line in out.splitlines() if line.startswith("total")), "?")
            per = took.wall / n * 1000
            base = base or per
            line = f"{n:>7} {jobs:>6} {took!s:>14} {per:>9.2f}"
            if args.finished:
                make_outputs(work, configfile, target)
                took_done, out_done = snakemake(work, configfile, target, "-n")
                if "Nothing to be done" not in out_done:
                    sys.exit(f"after --touch, `snakemake -n {target}` still has work:\n{out_done[-2000:]}")
                line += f" {took_done!s:>14} {took_done.wall / n * 1000:>9.2f}"
            print(line, flush=True)
        print(f"per-slide cost at {args.sizes[-1]} vs {args.sizes[0]}: {per / base:.2f}x")


if __name__ == "__main__":
    main()
