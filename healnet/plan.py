"""What the Snakemake rules ask of the config: which names a wildcard may take, how many folds a cohort
has, which models the paper trains, which data files a model reads, and the environment rules run in.

workflow/rules/common.smk calls these with the typed config (healnet.config.Config); they know nothing
of Snakemake, so they are unit-tested on their own (tests/test_plan.py).
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from healnet import warm
from healnet.config import Config
from healnet.modalities import WSI
from healnet.survival.splits import order_split_files

# What a wildcard may name: the cohorts each kind of rule makes, the models, the encoders.
CHOICES: dict[str, Callable[[Config], Iterable[str]]] = {
    "cohort": lambda cfg: cfg.cohorts,
    "synthetic_cohort": lambda cfg: [n for n, c in cfg.cohorts.items() if c.synthetic],
    "gdc_cohort": lambda cfg: [n for n, c in cfg.cohorts.items() if c.gdc_project],
    "table_cohort": lambda cfg: [n for n, c in cfg.cohorts.items() if c.clinical_omics_url],
    "splits_cohort": lambda cfg: [n for n, c in cfg.cohorts.items() if c.splits_url],
    "paper_cohort": lambda cfg: cfg.paper.cohorts,
    "model": lambda cfg: cfg.models,
    "encoder": lambda cfg: cfg.encoders,
    "reference": lambda cfg: cfg.reference_files,
}


def wildcard_pattern(cfg: Config, what: str) -> str:
    """The wildcard constraint matching exactly the names of `what` (a key of CHOICES), or NO_<WHAT>
    when there are none, so that e.g. the GDC rules match no file of a config without a GDC cohort."""
    if what not in CHOICES:
        raise ValueError(f"unknown wildcard choice {what!r}; known: {', '.join(CHOICES)}")
    return "|".join(re.escape(n) for n in sorted(CHOICES[what](cfg))) or f"NO_{what.upper()}"


def n_folds(cfg: Config, name: str) -> int:
    """The cohort's folds: one per pinned download, per provided splits_{k}.csv, else `splits.n_folds`."""
    c = cfg.cohorts[name]
    if c.splits_url:
        return len(c.splits_sha256 or [])  # downloaded splits: one pinned file per fold
    if c.splits:
        files = sorted(Path(c.splits).glob("splits_*.csv"))
        if not files:
            raise ValueError(f"cohorts.{name}.splits: no splits_*.csv files in {c.splits}")
        return len(order_split_files(files))  # numbered 0..n-1, as the splits stage requires
    return cfg.splits.n_folds


def split_files(cfg: Config, name: str) -> list[str]:
    """The cohort's provided splits_{k}.csv files (k < n_folds); none when the folds are generated."""
    c = cfg.cohorts[name]
    if not c.splits:
        return []
    return [str(Path(c.splits) / f"splits_{k}.csv") for k in range(n_folds(cfg, name))]


def paper_models(cfg: Config, name: str) -> list[str]:
    """Models a paper cohort trains: Table 1's rows, the XOR pair, the inspected model; slide-only
    models are left out on a cohort without slides (their cells stay empty)."""
    c = cfg.cohorts[name]
    has_slides = c.wsi and bool(c.slides or c.synthetic)
    return [m for m in cfg.paper.needed_models() if has_slides or cfg.models[m].modalities != [WSI]]


def feature_store_paths(cohort: str, encoder: str, slide_ids: Iterable[str]) -> list[str]:
    """results/{cohort}/features/{encoder}/{slide}.zarr of each slide."""
    return [f"results/{cohort}/features/{encoder}/{s}.zarr" for s in slide_ids]


def model_data_inputs(
    cfg: Config,
    name: str,
    models: Iterable[str],
    sheet_of: Callable[[str], str | None],
    slides_of: Callable[[str], list[str]],
) -> dict[str, str | list[str]]:
    """Data the models read: the omics matrix if any uses omics, gene-family files (`signatures`)
    they name, feature stores + sample sheet if any uses the slides. `sheet_of(cohort)` /
    `slides_of(cohort)` give the sample sheet and its slide ids; they are called only when a model
    uses the slides (a GDC sheet needs every slide downloaded)."""
    specs = [cfg.models[m] for m in models]
    out: dict[str, str | list[str]] = {}
    if any(mod != WSI for s in specs for mod in s.modalities):
        out["omics"] = f"results/{name}/omics.tsv.gz"
    references = sorted({s.params["signatures"] for s in specs if s.params.get("signatures")})
    if references:  # gene-family files: fetched by rule fetch_reference when under data/reference
        out["signatures"] = references
    if any(WSI in s.modalities for s in specs):
        sheet = sheet_of(name)
        if sheet is not None:  # a cohort without slides: WSI missing for everyone
            out["sheet"] = sheet
            out["features"] = feature_store_paths(name, cfg.cohort_encoder(name), slides_of(name))
    return out


def sheet_mpp(value: float | str | None) -> float | str:
    """A sample sheet's `mpp` cell as `healnet tissue --mpp` takes it: the number, or '' when empty."""
    if value is None or value == "":
        return ""
    value = float(value)
    return "" if math.isnan(value) else value


class Untracked:
    """A params value Snakemake leaves out of its rerun trigger, shown as its text in commands.

    Snakemake records params of builtin types only (snakemake.persistence._serialize_param) and
    reruns a job whose recorded params changed. Connection settings do not change what a download
    is (the checksum says that), so a new timeout or token file must not re-fetch 400 GB of slides.
    """

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text


def rule_environment(workflow_basedir: str | Path, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What common.smk puts into the environment of the rules' jobs.

    PATH: the directory of the Python running Snakemake first, so its `healnet` is the one the rules
    call: `.venv/bin/snakemake` works without an activated venv, and cluster jobs (which run this same
    Python) find it too. With --use-conda, Snakemake activates the rule's env after this, so its own
    `healnet` wins there. HEALNET_REPO: the repository holding the Snakefile, which
    envs/healnet.post-deploy.sh installs into a new rule env. HEALNET_WARM: "0", no warm starts
    (healnet/warm.py), also where the user's shell exported "1" (cluster jobs inherit that environment);
    common.smk's onstart switches them on for a local run with `warm_start`.
    """
    return {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", "")]),
        "HEALNET_REPO": str(Path(workflow_basedir).parent),
        warm.ENV_SWITCH: "0",
    }
