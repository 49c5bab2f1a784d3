"""`healnet train`: train one model on one fold; writes the run folder (`healnet.runs`): checkpoint.pt,
run.json, predictions.tsv, train_log.tsv."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", required=True, help="labels.tsv (case_id, survival_months, censorship, event, bin)")
    p.add_argument("--fold-file", required=True, help="splits/fold<k>.tsv (case_id, split)")
    p.add_argument("--fold", type=int, required=True, help="fold number k (seeds the run with training.seed + k)")
    p.add_argument("--omics", help="omics.tsv.gz; omit when the model uses no omics")
    p.add_argument("--features", nargs="*", default=[], help="feature stores (features/<encoder>/<slide>.zarr)")
    p.add_argument("--sheet", help="sample sheet mapping slides to patients (needed with --features)")
    p.add_argument("--model", required=True, help="model name (a key of config `models`)")
    p.add_argument("--spec", required=True, help="the model's config entry as JSON (architecture, modalities, params)")
    p.add_argument("--training", help="config section `training` as JSON")
    p.add_argument("--omics-params", help="config section `omics` as JSON")
    p.add_argument("--labels-params", help="config section `labels` as JSON")
    p.add_argument("--outdir", required=True, help="models/<model>/fold<k>/")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def run(args: argparse.Namespace) -> None:
    from healnet.cli import parse_params
    from healnet.config import Labels, ModelSpec, Omics, Training
    from healnet.training.data import load_fold_data
    from healnet.training.loop import train_fold

    spec = parse_params(args.spec, ModelSpec)
    training = parse_params(args.training, Training)
    modalities = list(spec.modalities)
    uses_omics = any(m != "wsi" for m in modalities)
    data = load_fold_data(
        args.labels,
        args.fold_file,
        args.omics if uses_omics else None,
        args.features if "wsi" in modalities else [],
        args.sheet,
        parse_params(args.omics_params, Omics),
        parse_params(args.labels_params, Labels),
        cache_bytes=int(training.cache_gb * 2**30),
    )
    frame = train_fold(
        data,
        spec.architecture,
        modalities,
        spec.params,
        training,
        args.fold,
        args.outdir,
        model_name=args.model,
        threads=args.threads,
    )
    log.info("wrote %s (%d test predictions)", args.outdir, len(frame))
