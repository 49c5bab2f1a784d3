"""`healnet <stage> ...`: one subcommand per pipeline stage; the Snakemake rules call these.

Each stage module exposes `add_arguments(parser)` and `run(args)`; heavy imports (torch,
openslide) happen inside `run`, so `healnet --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import TypeVar

from pydantic import BaseModel

from healnet import __version__, warm
from healnet.logs import setup_logging

# (subcommand, module, one-line help). Order is pipeline order.
COMMANDS: list[tuple[str, str, str]] = [
    ("validate-config", "healnet.commands.config", "validate config files; print the merged config"),
    ("schema", "healnet.commands.schema", "write the config JSON schema (workflow/schemas)"),
    ("gdc-manifest", "healnet.commands.gdc_manifest", "list a GDC project's diagnostic slides (manifest TSV)"),
    ("gdc-download", "healnet.commands.gdc_download", "download GDC slides: resumable, md5-verified"),
    ("gdc-sheet", "healnet.commands.gdc_sheet", "sample sheet of a GDC cohort from its manifest"),
    ("fetch-table", "healnet.commands.fetch_table", "download a clinical + omics table or split, sha256-verified"),
    ("demo-cohort", "healnet.commands.demo", "write the synthetic demo cohort (slides, sheet, table, truth)"),
    ("tissue", "healnet.commands.tissue", "tissue polygons (GeoJSON) and QC picture of one slide"),
    ("patches", "healnet.commands.patches", "224 px patch grid at 0.5 um/px over a slide's tissue (Zarr)"),
    ("features", "healnet.commands.features", "encode a slide's patches into a feature store (Zarr)"),
    ("slides-qc", "healnet.commands.slides_qc", "per-cohort slide table: status, reason, mpp, tissue, patches"),
    ("omics", "healnet.commands.omics", "per-patient omics matrix of a cohort (omics.tsv.gz)"),
    ("labels", "healnet.commands.labels", "survival labels and discrete-time bins (labels.tsv)"),
    ("splits", "healnet.commands.splits", "patient-level cross-validation folds (splits/fold{k}.tsv)"),
    ("train", "healnet.commands.train", "train one model on one fold (checkpoint, predictions, log)"),
    ("predict", "healnet.commands.predict", "score new patients with a trained run folder (predictions TSV)"),
    ("evaluate", "healnet.commands.evaluate", "c-index tables, missing-modality evaluation, attention inspection"),
    ("paper", "healnet.commands.paper", "the paper's tables and figures: per-cohort evaluation, Tables 1-2, uplift"),
    ("km-plot", "healnet.commands.km_plot", "Kaplan-Meier curves of predicted low/high-risk groups per cohort"),
    ("report-table", "healnet.commands.report_table", "TSV tables as HTML pages for the Snakemake report"),
    ("versions", "healnet.commands.versions", "the installed stack against requirements.lock: a table, or --check"),
    ("env-yaml", "healnet.commands.env_yaml", "write envs/healnet.yaml (the rules' conda env) from requirements.lock"),
]

M = TypeVar("M", bound=BaseModel)


def parse_params(text: str | None, model: type[M]) -> M:
    """A stage's parameters, passed by the rule as JSON and validated by the config model."""
    return model.model_validate(json.loads(text) if text else {})


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; with `only` (a subcommand name), the other stages are listed without
    importing their modules (a rule's `healnet <stage>` call then imports just its own stage)."""
    parser = argparse.ArgumentParser(prog="healnet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"healnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<stage>", required=True)
    for name, module_name, help_text in COMMANDS:
        if only is not None and name != only:
            sub.add_parser(name, help=help_text, description=help_text)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--log", help="also write the log to this file")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in warm.STAGES and warm.enabled():  # local Snakemake runs: healnet/warm.py
        status = warm.run(argv)
        if status is not None:
            return status
    return run_here(argv)


def run_here(argv: list[str]) -> int:
    """Run one stage in this process."""
    stage = argv[0] if argv and argv[0] in {name for name, _, _ in COMMANDS} else None
    args = build_parser(only=stage).parse_args(argv)
    setup_logging(args.log)
    try:
        result = args._run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # Errors meant for the user: one clear message, no traceback.
        logging.getLogger("healnet").error("%s", err)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
