"""Experiment: HEALNet, SNN, coxnet and cox_clinical on the real TCGA omics tables (no slides).

For each cohort (BLCA, BRCA, KIRP, UCEC by default) and each provided fold (`splits_{k}.csv`; its
`val` column is our `test`), with the pipeline's own stage functions (omics matrix, labels, splits,
`load_fold_data` with bin edges from the training patients, `train_fold`, `metrics_of`):

- `coxnet` and `cox_clinical` (healnet/models/cox.py), fitted once per fold;
- `snn` with config.yaml's recipe, `--seeds` seeds;
- `healnet` (omics + clinical modalities, named by `--label`): the recipe among `--candidates`
  (omics tokenisation, a linear risk term beside the latent path; `candidates`) and the epoch count
  are chosen by `healnet.training.select.select_recipe` on an inner split of the fold's TRAINING
  patients only (2 inner splits of 25 % validation, stratified on bin x event); the winner is retrained on the
  whole training part with `--seeds` seeds and scored once on the test patients;
- `healnet_omics_small`: config.yaml's fixed recipe, no selection.

Writes `<out>/results.tsv` (one row per cohort, fold, model, seed) and `<out>/selection.tsv` (every
candidate's inner-validation curve per fold), appending as it goes, then prints mean +- std over
folds (of the per-fold mean over seeds), the mean seed spread, and the paper's rows.
Not part of `make bench` (which runs bench/bench_*.py): about 2 CPU-hours for the four cohorts.
Run (2 shared cores: nice, one torch thread):
    nice -n 10 python bench/omics_models.py --out /tmp/omics_models [--cohorts blca kirp]
    python bench/omics_models.py --out /tmp/omics_models --summary-only
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HEALNET_SHARED_DATA", REPO.parent / "shared" / "data")) / "tcga"  # or /work/shared/data
SIGNATURES = DATA / "signatures.csv"
PAPER = {
    "snn": {"blca": 0.606, "brca": 0.580, "kirp": 0.780, "ucec": 0.550},
    "healnet": {"blca": 0.668, "brca": 0.638, "kirp": 0.812, "ucec": 0.626},
}
# HEALNet for a few hundred patients, fixed before any run (not tuned): one fusion layer, 8 latents,
# 2 heads; batch 16 at lr 5e-4 (half the steps of batch 8 for the same epochs).
SMALL = dict(depth=1, num_latents=8, latent_dim=32, heads=2, self_heads=2, dim_head=16, token_dim=16)
HEALNET_TRAINING = dict(batch_size=16, grad_accumulation=1, lr=5e-4, epochs=20)

log = logging.getLogger("omics_models")


def candidates(training, names: list[str]) -> dict:
    """The HEALNet recipes the inner validation chooses between, by name (CANDIDATES)."""
    from healnet.config import with_keys
    from healnet.training.select import Recipe

    base = with_keys(training, HEALNET_TRAINING)
    mods = ("omics", "clinical")
    family = {**SMALL, "omics_tokens": "family", "signatures": str(SIGNATURES)}
    recipes = {
        "modality": Recipe("healnet", mods, {**SMALL, "omics_tokens": "modality"}, base),
        "family": Recipe("healnet", mods, family, base),
        "feature_l1": Recipe("healnet", mods, {**SMALL, "omics_tokens": "feature"}, with_keys(base, {"l1": 1e-5})),
    }
    # family tokens + a linear risk term (healnet.py: linear_skip) of age and sex, or of age, sex and
    # every omic feature; `_x10`: the term moving 10x faster (linear_skip_scale)
    for name, skip in (("family_clinical", ["clinical"]), ("family_linear", ["clinical", "omics"])):
        for suffix, scale in (("", 1.0), ("_x10", 10.0)):
            params = {**family, "linear_skip": skip, "linear_skip_scale": scale}
            recipes[name + suffix] = Recipe("healnet", mods, params, base)
    unknown = set(names) - set(recipes)
    if unknown:
        raise SystemExit(f"unknown candidates {sorted(unknown)}; known: {sorted(recipes)}")
    return {n: recipes[n] for n in names}


# First run (2026-12-03, all folds): modality vs family. `feature_l1` lost the inner validation of
# the first 4 folds it ran in at 4x the cost. Second run: family alone or with a linear skip
# (CANDIDATES_V2). Third run: the same with the skip 10x faster.
CANDIDATES_V1 = ["modality", "family"]
CANDIDATES_V2 = ["family", "family_clinical", "family_linear"]
CANDIDATES = ["family", "family_clinical_x10", "family_linear_x10"]


def prepare(cohort: str, out: Path, omics_cfg, labels_cfg, splits_cfg) -> Path:
    """The omics matrix, labels and fold files of a cohort (the pipeline's stage functions)."""
    from healnet.omics.preprocess import build_omics
    from healnet.survival.labels import build_labels
    from healnet.survival.splits import build_splits

    d = out / cohort
    table = DATA / cohort / "clinical_omics.csv.zip"
    split_files = sorted((DATA / cohort / "splits").glob("splits_*.csv"))
    if not (d / "omics.tsv.gz").exists():
        build_omics(table, d / "omics.tsv.gz", omics_cfg)
    if not (d / "labels.tsv").exists():
        build_labels(table, d / "labels.tsv", labels_cfg)
    if not (d / "splits" / f"fold{len(split_files) - 1}.tsv").exists():
        build_splits(
            d / "labels.tsv",
            {k: d / "splits" / f"fold{k}.tsv" for k in range(len(split_files))},
            splits_cfg,
            split_files,
        )
    return d


def score(frame: pd.DataFrame, edges) -> list[dict]:
    """Per seed: the metrics `healnet evaluate` writes to cindex.tsv."""
    from healnet.evaluate.metrics import metrics_of

    return [{"seed": int(s), **metrics_of(f, edges)} for s, f in frame.groupby("seed")]


RESULT_COLUMNS = ["cohort", "fold", "model", "seed", "cindex", "cindex_td", "ibs", "n", "events", "seconds", "recipe"]


def append(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """Append rows to a TSV (fixed columns, so rows of every model line up)."""
    df = pd.DataFrame(rows, columns=columns)
    df.to_csv(path, sep="\t", index=False, mode="a", header=not path.exists())


MODELS = ["coxnet", "cox_clinical", "snn", "healnet", "healnet_omics_small"]


def run_fold(
    cohort: str,
    k: int,
    d: Path,
    out: Path,
    cfg,
    seeds: int,
    skip: set,
    names: list[str] = CANDIDATES,
    models: list[str] = MODELS,
    label: str = "healnet",
) -> None:
    from healnet.config import with_keys
    from healnet.training.data import load_fold_data
    from healnet.training.loop import train_fold
    from healnet.training.select import final_recipe, select_recipe

    data = load_fold_data(
        d / "labels.tsv", d / "splits" / f"fold{k}.tsv", d / "omics.tsv.gz", [], None, cfg.omics, cfg.labels
    )
    runs = out / "runs" / cohort
    training = with_keys(cfg.training, {"seeds": seeds})
    jobs = {
        "coxnet": ("coxnet", ["omics"], {}, cfg.training),
        "cox_clinical": ("cox_clinical", ["clinical"], {}, cfg.training),
        "snn": ("snn", ["omics"], dict(cfg.models["snn"].params), with_keys(training, cfg.models["snn"].training)),
        # config.yaml's fixed recipe (no selection per fold), gene families from the shared copy
        "healnet_omics_small": (
            "healnet",
            list(cfg.models["healnet_omics_small"].modalities),
            {**cfg.models["healnet_omics_small"].params, "signatures": str(SIGNATURES)},
            with_keys(training, cfg.models["healnet_omics_small"].training),
        ),
    }
    for model, (arch, mods, params, tcfg) in jobs.items():
        if (cohort, k, model) in skip or model not in models:
            continue
        t0 = time.perf_counter()
        frame = train_fold(data, arch, mods, params, tcfg, k, runs / model / f"fold{k}", model, threads=1)
        rows = [
            {"cohort": cohort, "fold": k, "model": model, **r, "seconds": time.perf_counter() - t0}
            for r in score(frame, data.edges)
        ]
        append(out / "results.tsv", rows, RESULT_COLUMNS)
        log.info("%s fold %d %s: %s", cohort, k, model, [round(r["cindex"], 3) for r in rows])
    if (cohort, k, label) in skip or "healnet" not in models:
        return
    t0 = time.perf_counter()
    cands = candidates(training, names)
    table = select_recipe(data, cands, k, seed=cfg.training.seed + k, fraction=0.25, repeats=2)
    append(out / "selection.tsv", table.assign(cohort=cohort, fold=k, model=label).to_dict("records"))
    chosen = table[table["chosen"]].iloc[0]
    recipe = final_recipe(cands[chosen["candidate"]], int(chosen["epochs"]))
    frame = train_fold(
        data,
        recipe.architecture,
        list(recipe.modalities),
        dict(recipe.params),
        recipe.training,
        k,
        runs / label / f"fold{k}",
        label,
        threads=1,
    )
    rows = [
        {
            "cohort": cohort,
            "fold": k,
            "model": label,
            **r,
            "seconds": time.perf_counter() - t0,
            "recipe": f"{chosen['candidate']}, {int(chosen['epochs'])} epochs",
        }
        for r in score(frame, data.edges)
    ]
    append(out / "results.tsv", rows, RESULT_COLUMNS)
    log.info("%s fold %d %s (%s): %s", cohort, k, label, rows[0]["recipe"], [round(r["cindex"], 3) for r in rows])


def fold_table(
    per_fold: pd.DataFrame, cohorts: list[str], models: list[str], folds: dict[str, set] | None = None
) -> list[str]:
    """Markdown rows: per model and cohort, mean +- std over folds of the per-fold mean over seeds."""
    lines = ["| model | " + " | ".join(c.upper() for c in cohorts) + " |", "|---|" + "---|" * len(cohorts)]
    for model in models:
        cells = []
        for c in cohorts:
            f = per_fold[(per_fold["cohort"] == c) & (per_fold["model"] == model)]
            if folds is not None:
                f = f[f["fold"].isin(folds.get(c, set()))]
            if f.empty:
                cells.append("-")
                continue
            seeds = int(f["count"].max())
            seed_sd = f", seed sd {f['std'].mean():.3f}" if seeds > 1 else ""
            cells.append(f"{f['mean'].mean():.3f} +- {f['mean'].std(ddof=0):.3f} ({len(f)} folds{seed_sd})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    for model, values in PAPER.items():
        lines.append(f"| paper {model} | " + " | ".join(f"{values[c]:.3f}" for c in cohorts) + " |")
    return lines


def summary(out: Path) -> str:
    res = pd.concat([pd.read_csv(f, sep="\t") for f in sorted(out.glob("**/results.tsv"))], ignore_index=True)
    res = res.drop_duplicates(["cohort", "fold", "model", "seed"])
    grouped = res.groupby(["cohort", "model", "fold"])["cindex"]
    per_fold = grouped.agg(["mean", "count"]).reset_index()
    per_fold["std"] = grouped.std(ddof=0).to_numpy()  # seed spread within the fold
    cohorts = [c for c in COHORTS_ORDER if c in set(res["cohort"])]
    # every HEALNet label (one per candidate set run), then the others
    models = sorted(m for m in set(res["model"]) if m.startswith("healnet")) + ["snn", "coxnet", "cox_clinical"]
    lines = [
        "All folds each model has (mean over seeds per fold; +- std over folds; seed sd: mean within-fold "
        "std over seeds):",
        "",
    ] + fold_table(per_fold, cohorts, models)
    deep = {c: set(per_fold[(per_fold["cohort"] == c) & (per_fold["model"] == "healnet")]["fold"]) for c in cohorts}
    lines += [
        "",
        "Only the folds where HEALNet finished (same folds for every model): "
        + "; ".join(f"{c}: {sorted(deep[c])}" for c in cohorts),
        "",
    ] + fold_table(per_fold, cohorts, models, deep)
    text = "\n".join(lines)
    sels = sorted(out.glob("**/selection.tsv"))
    if sels:
        s = pd.concat([pd.read_csv(f, sep="\t") for f in sels], ignore_index=True)
        s["model"] = s["model"].fillna("healnet") if "model" in s else "healnet"
        won = (
            s[s["chosen"]]
            .sort_values(["model", "cohort", "fold"])
            .groupby(["model", "cohort"])
            .apply(lambda g: ", ".join(f"{f}: {c} ({e} ep)" for f, c, e in zip(g["fold"], g["candidate"], g["epochs"])))
        )
        text += "\n\ninner-validation choice per fold: " + "; ".join(f"{m} {c}: {w}" for (m, c), w in won.items())
        text += (
            "\nmean inner-val c-index per candidate:\n"
            + s.pivot_table(index=["model", "candidate"], columns="cohort", values="score", aggfunc="mean")
            .round(3)
            .to_string()
        )
    return text


COHORTS_ORDER = ["blca", "brca", "kirp", "ucec"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--cohorts", nargs="+", default=COHORTS_ORDER)
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument(
        "--candidates",
        nargs="+",
        default=CANDIDATES,
        help=f"HEALNet recipes to choose from (first run: {CANDIDATES_V1}; second: {CANDIDATES_V2})",
    )
    p.add_argument("--label", default="healnet", help="model name of the selected HEALNet in results.tsv")
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("healnet.training", "healnet.omics", "healnet.survival", "healnet.models"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.summary_only:
        import torch

        from healnet.config import load_config

        torch.set_num_threads(1)
        cfg = load_config(REPO / "config.yaml")
        args.out.mkdir(parents=True, exist_ok=True)
        done = set()
        if (args.out / "results.tsv").exists():  # resume: skip (cohort, fold, model) already measured
            r = pd.read_csv(args.out / "results.tsv", sep="\t")
            done = set(zip(r["cohort"], r["fold"], r["model"]))
        for cohort in args.cohorts:
            d = prepare(cohort, args.out, cfg.omics, cfg.labels, cfg.splits)
            for k in args.folds:
                run_fold(cohort, k, d, args.out, cfg, args.seeds, done, args.candidates, args.models, args.label)
    print(summary(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
