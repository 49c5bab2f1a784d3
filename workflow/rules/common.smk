# Config and sample-sheet loading, validation, and the input functions the rules use.
# The logic lives in the `healnet` package; this file only connects it to Snakemake.
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from healnet.config import ConfigError, parse_config
from healnet.sheets import read_sample_sheet

# Friendly check first (names the bad key and the allowed ones), then the JSON schema.
try:
    CFG = parse_config(
        config, source="the workflow config (config.yaml + --configfile/--config)"
    )
except ConfigError as err:
    raise WorkflowError(str(err))
validate(config, "../schemas/config.schema.yaml")

COHORTS = sorted(CFG.cohorts)


wildcard_constraints:
    cohort="|".join(COHORTS) or "NO_COHORT",
    slide=r"[^/]+",
    fold=r"\d+",


def section_json(name):
    """One validated config section as JSON, passed to `healnet <stage> --params`."""
    return getattr(CFG, name).model_dump_json()


def cohort(name):
    return CFG.cohorts[name]


def sample_sheet_path(name):
    """The cohort's sample sheet, through the rule that makes it when it is generated."""
    c = cohort(name)
    if c.synthetic:
        return checkpoints.demo_cohort.get(cohort=name).output.sheet
    return c.slides


def sample_sheet(name):
    """The cohort's slides as a DataFrame (empty for an omics-only cohort)."""
    import pandas as pd

    path = sample_sheet_path(name)
    if path is None:
        return pd.DataFrame(columns=["case_id", "slide_id", "path", "mpp"])
    return read_sample_sheet(path)


def slide_row(wildcards):
    sheet = sample_sheet(wildcards.cohort).set_index("slide_id")
    if wildcards.slide not in sheet.index:
        raise WorkflowError(
            f"slide {wildcards.slide!r} is not in the sample sheet of cohort {wildcards.cohort!r}"
        )
    return sheet.loc[wildcards.slide]


def slide_path(wildcards):
    return slide_row(wildcards)["path"]


def slide_mpp_override(wildcards):
    """Per-slide mpp from the sample sheet, else the cohort's `mpp`, else empty."""
    mpp = slide_row(wildcards)["mpp"]
    if mpp == mpp:  # not NaN
        return float(mpp)
    return cohort(wildcards.cohort).mpp or ""


def cohort_slides(name):
    return list(sample_sheet(name)["slide_id"])


def encoder_of(name):
    return CFG.cohort_encoder(name)


def clinical_omics_path(name):
    c = cohort(name)
    if c.synthetic:
        return checkpoints.demo_cohort.get(cohort=name).output.table
    return c.clinical_omics


def n_folds(name):
    c = cohort(name)
    if c.splits:
        files = sorted(Path(c.splits).glob("splits_*.csv"))
        if not files:
            raise WorkflowError(
                f"cohorts.{name}.splits: no splits_*.csv files in {c.splits}"
            )
        return len(files)
    return CFG.splits.n_folds


def cohort_models(name):
    return CFG.cohort_models(name)


def clinical_omics_input(wildcards):
    """The cohort's clinical + omics table (input of the omics and labels rules)."""
    return clinical_omics_path(wildcards.cohort)


def provided_split_files(wildcards):
    """The cohort's splits_{k}.csv files (k < n_folds); none when the folds are generated."""
    c = cohort(wildcards.cohort)
    if not c.splits:
        return []
    return [
        str(Path(c.splits) / f"splits_{k}.csv")
        for k in range(n_folds(wildcards.cohort))
    ]
