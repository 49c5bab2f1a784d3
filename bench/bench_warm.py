"""`healnet features` jobs started cold (own process, imports torch) against warm (forked from the
pre-imported server, healnet/warm.py), alternating on the same small slides in one run.

Each slide is a demo-sized synthetic slide (800 x 600 um at 0.5 um/px, a few dozen patches); tissue
and patches are made once, in this process. Then for every slide one cold and one warm job run, in
alternating order, each as a subprocess the way a Snakemake rule runs it. Prints wall seconds and
CPU seconds per job (cold: the job's process; warm: the caller plus the worker's own CPU, which its
log reports), the ratios, the server's start-up (paid by the first warm job only) and the largest
difference between cold and warm features.

    python bench/bench_warm.py              # 12 slides, ResNet18-trunc (the demo's encoder)
    python bench/bench_warm.py --slides 6 --encoder resnet50_trunc_random
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from healnet import config
from healnet.wsi.stages import run_patches, run_tissue
from healnet.wsi.store import read_feature_store
from healnet.wsi.synthetic import he_image, write_slide

REPO = Path(__file__).resolve().parents[1]
HEALNET = str(Path(sys.executable).parent / "healnet")
WORKER_CPU = re.compile(r"ran in warm-start worker \d+: ([\d.]+) CPU-s")


def make_slide(d: Path, i: int) -> tuple[str, Path]:
    path = str(write_slide(d / f"s{i}.svs", he_image(1600, 1200, 0.5, seed=i), 0.5))
    reading, patching = config.SlideReading(), config.Patching()
    run_tissue(path, f"s{i}", d / f"s{i}.geojson", d / f"s{i}.png", reading, config.Tissue(), patching)
    run_patches(path, f"s{i}", d / f"s{i}.geojson", d / f"s{i}_p.zarr", reading, patching)
    return path, d / f"s{i}_p.zarr"


def run_job(slide: str, patches: Path, out: Path, encoder: str, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one `healnet features` job (CPU incl. a warm worker's own)."""
    log = out.with_suffix(".log")
    cmd = [
        HEALNET,
        "features",
        "--slide",
        str(slide),
        "--patches",
        str(patches),
        "--output",
        str(out),
        "--encoder-name",
        "bench",
        "--encoder",
        encoder,
        "--threads",
        "1",
        "--log",
        str(log),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    worker = WORKER_CPU.search(log.read_text())
    return wall, cpu + (float(worker.group(1)) if worker else 0.0)


def main_bench() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=12)
    ap.add_argument("--encoder", default="resnet18_trunc_random", help="a key of config.yaml's encoders")
    args = ap.parse_args()
    encoder_json = json.dumps(yaml.safe_load((REPO / "config.yaml").read_text())["encoders"][args.encoder])
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "tmp").mkdir()
        env = {**os.environ, "TMPDIR": str(d / "tmp")}  # a server of this bench's own
        slides = [make_slide(d, i) for i in range(args.slides)]
        times: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": []}
        first_warm = None
        max_diff = 0.0
        for i, (slide, patches) in enumerate(slides):
            order = ("cold", "warm") if i % 2 == 0 else ("warm", "cold")
            for mode in order:
                wall_cpu = run_job(
                    slide,
                    patches,
                    d / f"{mode}{i}.zarr",
                    encoder_json,
                    {**env, "HEALNET_WARM": "1" if mode == "warm" else "0"},
                )
                if mode == "warm" and first_warm is None:
                    first_warm = wall_cpu  # includes starting the server
                else:
                    times[mode].append(wall_cpu)
            a, b = read_feature_store(d / f"cold{i}.zarr"), read_feature_store(d / f"warm{i}.zarr")
            assert np.array_equal(a.coords, b.coords), f"slide {i}: cold and warm patch coordinates differ"
            max_diff = max(max_diff, float(np.abs(a.features - b.features).max()))
        n_patches = read_feature_store(d / "cold0.zarr").features.shape[0]
        for sock in (d / "tmp").glob("healnet-warm-*/*.sock"):
            sock.unlink()  # the server exits at its next check
    cold_wall = statistics.median(w for w, _ in times["cold"])
    warm_wall = statistics.median(w for w, _ in times["warm"])
    cold_cpu = statistics.median(c for _, c in times["cold"])
    warm_cpu = statistics.median(c for _, c in times["warm"])
    print(f"{args.slides} slides of ~{n_patches} patches, encoder {args.encoder}, 1 thread per job")
    print(f"cold job: median {cold_wall:.2f} s wall, {cold_cpu:.2f} CPU-s ({len(times['cold'])} jobs)")
    print(f"warm job: median {warm_wall:.2f} s wall, {warm_cpu:.2f} CPU-s ({len(times['warm'])} jobs)")
    print(f"ratio cold / warm: {cold_wall / warm_wall:.1f}x wall, {cold_cpu / warm_cpu:.1f}x CPU")
    print(f"first warm job (starts the server): {first_warm[0]:.2f} s wall")
    print(f"largest |cold - warm| feature difference: {max_diff:.2e}")


if __name__ == "__main__":
    main_bench()
