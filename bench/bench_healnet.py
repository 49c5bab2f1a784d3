"""Benchmark: HEALNet forward + backward time and peak memory for WSI bags of 1k, 10k and 100k patches.

One patient (batch 1), 1024-d patch features (ResNet50 layer3), plus a 2000-feature omics vector, the
model with its default parameters. Each bag size runs in a fresh process so the peak is its own:
CPU peak = rise of the process's max RSS over the model and inputs already allocated; CUDA peak =
`torch.cuda.max_memory_allocated` over the same baseline. Prints time and memory per bag and per patch
(the ratio to bag size), and exits 1 when memory or time per patch at 100k exceeds 2x its value at
10k (i.e. the cost is not linear in the number of patches).

Run: `python bench/bench_healnet.py [--device cpu|cuda] [--sizes 1000 10000 100000]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

D, F_OMICS, REPEATS = 1024, 2000, 3


def measure(n: int, device: str, threads: int) -> dict:
    """Time and peak memory of one forward + backward pass on a bag of n patches (runs in-process)."""
    import resource

    import torch

    from healnet.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model("healnet", {"wsi": D, "omics": F_OMICS}, 4).to(device).train()
    batch = {
        "wsi": torch.randn(1, n, D, device=device),
        "wsi_mask": torch.ones(1, n, dtype=torch.bool, device=device),
        "omics": torch.randn(1, F_OMICS, device=device),
    }

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(batch).sum().backward()

    # Baseline after the model and the inputs exist, before any pass: the peak is the working memory
    # of forward + backward (activations, gradients, attention), not the bag itself.
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step()  # warm-up (kernels, allocator)
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"n": n, "seconds": min(times), "peak_bytes": max(peak, 0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: measure one size
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.device, args.threads)))
        return 0
    rows = []
    for n in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--device", args.device, "--threads", str(args.threads), "--one", str(n)],
            capture_output=True, text=True, check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import torch

    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"HEALNet forward+backward, 1 patient, D={D}, omics {F_OMICS} features, default params ({name})")
    print(f"{'patches':>8} {'seconds':>9} {'peak MiB':>9} {'us/patch':>9} {'KiB/patch':>10}")
    for r in rows:
        print(f"{r['n']:>8} {r['seconds']:>9.3f} {r['peak_bytes'] / 2**20:>9.1f} "
              f"{r['seconds'] / r['n'] * 1e6:>9.2f} {r['peak_bytes'] / r['n'] / 1024:>10.2f}")
    by = {r["n"]: r for r in rows}
    if 10000 in by and 100000 in by:
        t_ratio = (by[100000]["seconds"] / 1e5) / (by[10000]["seconds"] / 1e4)
        m_ratio = (by[100000]["peak_bytes"] / 1e5) / max(by[10000]["peak_bytes"] / 1e4, 1)
        print(f"per-patch cost at 100k / at 10k: time {t_ratio:.2f}, memory {m_ratio:.2f} (1.0 = linear)")
        if t_ratio > 2 or m_ratio > 2:
            print("FAIL: cost grows faster than linearly in the number of patches")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
