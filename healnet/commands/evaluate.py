"""`healnet evaluate`: cindex.tsv, cindex_missing.tsv and attention inspection of a cohort's models."""

from __future__ import annotations

import argparse


def add_cohort_arguments(p: argparse.ArgumentParser) -> None:
    """The inputs of a cohort's trained models (shared with `healnet paper cohort`)."""
    p.add_argument("--models", nargs="+", required=True, help="model names (folders under --models-dir)")
    p.add_argument("--models-dir", required=True, help="results/<cohort>/models")
    p.add_argument("--fold-files", nargs="+", required=True, help="splits/fold<k>.tsv of every fold")
    p.add_argument("--labels", required=True, help="labels.tsv")
    p.add_argument("--omics", help="omics.tsv.gz (to re-run models on missing-modality scenarios)")
    p.add_argument("--features", nargs="*", default=[], help="feature stores of the cohort")
    p.add_argument("--sheet", help="sample sheet (slides -> patients, slide paths for heatmaps and tiles)")
    p.add_argument("--training", help="config section `training` as JSON (device, cache)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def open_cohort(args: argparse.Namespace):
    """The `CohortRuns` of the arguments of `add_cohort_arguments`; sets torch's threads. Each run
    carries its omics transform and bin edges, so no `omics`/`labels` config is needed."""
    import torch

    from healnet.cli import parse_params
    from healnet.config import Training
    from healnet.evaluate.cohort import CohortRuns
    from healnet.training.loop import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    training = parse_params(args.training, Training)
    return CohortRuns.from_files(
        args.models_dir,
        args.fold_files,
        args.labels,
        args.omics,
        args.features,
        args.sheet,
        training.cache_gb,
        str(resolve_device(training.device)),
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_cohort_arguments(p)
    p.add_argument("--cindex", required=True, help="output cindex.tsv")
    p.add_argument("--missing", required=True, help="output cindex_missing.tsv")
    p.add_argument("--inspect", help="output folder of attention heatmaps and top omic features")
    p.add_argument("--params", help="config section `evaluation` as JSON")
    p.add_argument("--versions", help="output versions.tsv: the software stack this evaluation ran with")


def run(args: argparse.Namespace) -> None:
    from healnet.cli import parse_params
    from healnet.config import Evaluation
    from healnet.evaluate import evaluate_cohort

    cohort = open_cohort(args)
    table = evaluate_cohort(
        args.models, cohort, parse_params(args.params, Evaluation), args.cindex, args.missing, args.inspect
    )
    if args.versions:  # beside cindex.tsv, so the table can be traced to its software
        from healnet.stack import write_versions

        write_versions(args.versions, device=cohort.device)
    summary = table[table["fold"] == "mean"][["model", "cindex", "cindex_td", "ibs"]]
    print(summary.to_string(index=False))
