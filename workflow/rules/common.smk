# Config and sample-sheet loading, validation, and the input functions the rules use.
# The logic lives in the `healnet` package; this file only connects it to Snakemake.
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

from healnet import runs
from healnet.hardware import has_nvidia_gpu
from healnet.config import ConfigError, parse_config, targets_given_as_configfiles
from healnet.sheets import indexed_sample_sheet

# `snakemake --configfile my.yaml results/x.tsv` reads the target as a config file (Snakemake itself
# fails first when it does not exist; when it does, it lands here).
misplaced = targets_given_as_configfiles(workflow.overwrite_configfiles or [])
if misplaced:
    raise WorkflowError(misplaced)
# Friendly check first (names the bad key and the allowed ones), then the JSON schema.
try:
    CFG = parse_config(
        config, source="the workflow config (config.yaml + --configfile/--config)"
    )
except ConfigError as err:
    raise WorkflowError(str(err))
# The typed config: `--config` gives nested values as strings ("cohorts={blca: {wsi: false}}").
validate(CFG.model_dump(mode="json"), "../schemas/config.schema.yaml")
for _cohort, _encoder in CFG.random_weight_cohorts():
    logger.warning(
        f"cohort {_cohort!r}: encoder {_encoder!r} has RANDOM weights (pretrained: false); its "
        f"features carry no pretrained knowledge. Set cohorts.{_cohort}.encoder to a pretrained one."
    )

COHORTS = sorted(CFG.cohorts)

# GPU rules hold the workflow profile's one `gpu` while they run, so two never share the device.
# Without a GPU they run on the CPU and need not queue for it (cluster profiles set their own).
GPU_JOB = 1 if has_nvidia_gpu() else 0


wildcard_constraints:
    cohort="|".join(COHORTS) or "NO_COHORT",
    slide=r"[^/]+",
    fold=r"\d+",


def section_json(name):
    """One validated config section as JSON, passed to `healnet <stage> --params`."""
    return getattr(CFG, name).model_dump_json()


def cohort_training_json(wildcards):
    """The `training` section with the cohort's overrides (cohorts.<c>.training), as JSON."""
    return CFG.cohort_training(wildcards.cohort).model_dump_json()


def model_training_json(wildcards):
    """How this model is trained on this cohort (`training`, then cohorts.<c>.training, then models.<m>.training)."""
    return CFG.model_training(wildcards.cohort, wildcards.model).model_dump_json()


def cohort(name):
    return CFG.cohorts[name]


def sample_sheet_path(name):
    """The cohort's sample sheet, through the rule that makes it when it is generated."""
    c = cohort(name)
    if not c.wsi:
        return None
    if c.synthetic:
        return checkpoints.demo_cohort.get(cohort=name).output.sheet
    if c.gdc_project:
        return checkpoints.gdc_sheet.get(cohort=name).output.sheet
    return c.slides


def sample_sheet(name):
    """The cohort's slides, read once per process (None for an omics-only cohort)."""
    path = sample_sheet_path(name)
    return None if path is None else indexed_sample_sheet(path)


def slide_row(wildcards):
    sheet = sample_sheet(wildcards.cohort)
    row = sheet.row(wildcards.slide) if sheet is not None else None
    if row is None:
        raise WorkflowError(
            f"slide {wildcards.slide!r} is not in the sample sheet of cohort {wildcards.cohort!r}"
        )
    return row


def slide_path(wildcards):
    return slide_row(wildcards)["path"]


def slide_mpp_override(wildcards):
    """Per-slide mpp from the sample sheet, else the cohort's `mpp`, else empty."""
    mpp = slide_row(wildcards)["mpp"]
    if mpp == mpp:  # not NaN
        return float(mpp)
    return cohort(wildcards.cohort).mpp or ""


def cohort_slides(name):
    sheet = sample_sheet(name)
    return [] if sheet is None else list(sheet.rows)


def encoder_of(name):
    return CFG.cohort_encoder(name)


def clinical_omics_path(name):
    c = cohort(name)
    if c.synthetic:
        return checkpoints.demo_cohort.get(cohort=name).output.table
    return c.clinical_omics


def n_folds(name):
    c = cohort(name)
    if c.splits_url:
        return len(c.splits_sha256)  # downloaded splits: one pinned file per fold
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


# --- GDC cohorts and downloaded tables (healnet/acquire) ---


def gdc_manifest_path(name):
    return f"data/{name}/gdc_manifest.tsv"


def gdc_manifest(name):
    """The cohort's GDC manifest, built by the gdc_manifest checkpoint when missing (or when the
    query in the config changed since), else reused as is: the pinned list of the cohort's slides.
    """
    from healnet.acquire.gdc import ManifestQuery, read_manifest_query

    path = checkpoints.gdc_manifest.get(cohort=name).output.manifest
    c = cohort(name)
    wanted = ManifestQuery(
        c.gdc_project, sorted(c.gdc_cases) if c.gdc_cases else None, c.gdc_max_files
    )
    built = read_manifest_query(path)
    if (
        built != wanted
    ):  # built before this workflow tracked its query (no metadata to rerun it)
        was = built.describe() if built else "an unknown query (no .json next to it)"
        raise WorkflowError(
            f"cohort {name!r}: the GDC manifest {path} was built for {was}, but the config "
            f"(gdc_project, gdc_cases, gdc_max_files) asks for {wanted.describe()}; "
            f"rebuild it: `snakemake --cores 1 {path} --forcerun gdc_manifest`"
        )
    return path


def synthetic_cohorts_regex():
    """Only synthetic cohorts are generated: a real cohort's missing sheet must never be faked."""
    return "|".join(n for n in COHORTS if cohort(n).synthetic) or "NO_SYNTHETIC_COHORT"


def gdc_cohorts_regex():
    return "|".join(n for n in COHORTS if cohort(n).gdc_project) or "NO_GDC_COHORT"


def gdc_project(wildcards):
    return cohort(wildcards.cohort).gdc_project


def gdc_query_args(wildcards):
    """Which slides the manifest lists: tracked as params, so changing them rebuilds the manifest."""
    c = cohort(wildcards.cohort)
    args = f"--max-files {c.gdc_max_files}" if c.gdc_max_files else ""
    if c.gdc_cases:
        args += " --cases " + " ".join(sorted(c.gdc_cases))
    return args.strip()


def gdc_manifest_input(wildcards):
    return gdc_manifest(wildcards.cohort)


def gdc_manifest_rows(name):
    """{file_name: manifest row}, read once per process."""
    from healnet.acquire.gdc import indexed_manifest

    return indexed_manifest(gdc_manifest(name))


def gdc_slide_files(wildcards):
    """Every slide of the manifest, in data/{cohort}/slides/: the downloads the sheet waits for."""
    rows = gdc_manifest_rows(wildcards.cohort)
    return [f"data/{wildcards.cohort}/slides/{name}" for name in rows]


def gdc_file(wildcards):
    """Manifest row of one slide (file_id, md5sum, file_size): what identifies the download."""
    rows = gdc_manifest_rows(wildcards.cohort)
    if wildcards.file_name not in rows:
        raise WorkflowError(
            f"data/{wildcards.cohort}/slides/{wildcards.file_name} is not in the GDC manifest "
            f"{gdc_manifest_path(wildcards.cohort)}"
        )
    return rows[wildcards.file_name]


def gdc_file_id(wildcards):
    return gdc_file(wildcards)["file_id"]


def gdc_md5(wildcards):
    return gdc_file(wildcards)["md5sum"]


def gdc_size(wildcards):
    return int(gdc_file(wildcards)["file_size"])


class Untracked:
    """A params value Snakemake leaves out of its rerun trigger, shown as its text in commands.

    Snakemake records params of builtin types only (snakemake.persistence._serialize_param) and
    reruns a job whose recorded params changed. Connection settings do not change what a download
    is (the checksum says that), so a new timeout or token file must not re-fetch 400 GB of slides.
    """

    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text


def gdc_connection(wildcards):
    """The `gdc` section (base_url, token_file, retries, timeouts) as untracked JSON."""
    return Untracked(section_json("gdc"))


def table_cohorts_regex():
    return (
        "|".join(n for n in COHORTS if cohort(n).clinical_omics_url)
        or "NO_TABLE_COHORT"
    )


def split_cohorts_regex():
    return "|".join(n for n in COHORTS if cohort(n).splits_url) or "NO_SPLITS_COHORT"


def table_url(wildcards):
    return cohort(wildcards.cohort).clinical_omics_url


def table_sha256(wildcards):
    return cohort(wildcards.cohort).clinical_omics_sha256


def split_url(wildcards):
    return cohort(wildcards.cohort).splits_url.replace("{k}", wildcards.fold)


def split_sha256(wildcards):
    hashes = cohort(wildcards.cohort).splits_sha256
    k = int(wildcards.fold)
    if k >= len(hashes):
        raise WorkflowError(
            f"cohort {wildcards.cohort!r}: no split {k}; splits_sha256 pins {len(hashes)} folds"
        )
    return hashes[k]


# --- Training and evaluation (healnet/training, healnet/evaluate.py) ---
from types import SimpleNamespace


def model_spec_json(wildcards):
    """The model's config entry (architecture, modalities, params) as JSON for `healnet train`."""
    return CFG.models[wildcards.model].model_dump_json()


def model_names_regex():
    return "|".join(sorted(CFG.models)) or "NO_MODEL"


def model_data_inputs(cohort_name, models):
    """Data the models read: omics matrix if any uses omics, feature stores + sheet if any uses WSI."""
    specs = [CFG.models[m] for m in models]
    out = {}
    if any(mod != "wsi" for s in specs for mod in s.modalities):
        out["omics"] = f"results/{cohort_name}/omics.tsv.gz"
    if any("wsi" in s.modalities for s in specs):
        sheet = sample_sheet_path(cohort_name)
        if sheet is not None:  # a cohort without slides: WSI missing for everyone
            out["sheet"] = sheet
            out["features"] = feature_stores(SimpleNamespace(cohort=cohort_name))
    return out


def train_data_inputs(wildcards):
    """What `healnet train` reads besides labels and its fold (those are named in the rule, so a
    dry run can print the command while a sample-sheet checkpoint is pending)."""
    return model_data_inputs(wildcards.cohort, [wildcards.model])


def cohort_runs(name, models):
    """results/{cohort}/models/{model}/fold{k} of every model and fold."""
    return runs.cohort_runs(name, models, n_folds(name))


def cohort_models_dir(wildcards):
    return runs.models_dir(wildcards.cohort)


def cohort_fold_files(wildcards):
    return [
        f"results/{wildcards.cohort}/splits/fold{k}.tsv"
        for k in range(n_folds(wildcards.cohort))
    ]


def evaluate_inputs(wildcards):
    c = wildcards.cohort
    dirs = cohort_runs(c, cohort_models(c))
    return {
        "checkpoints": [f"{r}/{runs.CHECKPOINT}" for r in dirs],
        "runs": [f"{r}/{runs.RUN_JSON}" for r in dirs],
        "predictions": [f"{r}/{runs.PREDICTIONS}" for r in dirs],
        **model_data_inputs(c, cohort_models(c)),
    }


def data_args(wildcards, input):
    """The optional data arguments of `healnet train/evaluate` (--omics, --sheet, --features)."""
    names = input.keys()
    args = []
    if "omics" in names:
        args.append(f"--omics {input.omics}")
    if "sheet" in names:
        args.append(f"--sheet {input.sheet}")
    if "features" in names:
        args.append("--features " + " ".join(input.features))
    return " ".join(args)


def cohort_model_list(wildcards):
    return " ".join(cohort_models(wildcards.cohort))


# --- Where rules find `healnet` (envs/, PATH) ---
import os
import sys

# Rules call `healnet`: the one installed beside the Python running Snakemake comes first on PATH,
# so `.venv/bin/snakemake` works without an activated venv, and cluster jobs (which run this same
# Python) find it too. With --use-conda, Snakemake activates the rule's env after this, so its own
# `healnet` wins there. envs/healnet.post-deploy.sh installs this repository into a new rule env.
# (Writes, not reads, so no `envvars:`; .update() keeps `snakemake --lint` from taking them for one.)
os.environ.update(
    PATH=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    ),
    HEALNET_REPO=str(Path(workflow.basedir).parent),
)


# --- Paper tables and figures (healnet/paper, rules/paper.smk) ---


def paper_models(name):
    """Models a paper cohort trains: Table 1's rows, the XOR pair, the inspected model; slide-only
    models are left out on a cohort without slides (their cells stay empty)."""
    c = cohort(name)
    has_slides = c.wsi and bool(c.slides or c.synthetic)
    return [
        m
        for m in CFG.paper.needed_models()
        if has_slides or CFG.models[m].modalities != ["wsi"]
    ]


def paper_model_list(wildcards):
    return " ".join(paper_models(wildcards.cohort))


def paper_cohorts_regex():
    return "|".join(CFG.paper.cohorts) or "NO_PAPER_COHORT"


def paper_files(name):
    """results/paper/{cohort}/<name> of every paper cohort, in column order."""
    return [f"results/paper/{c}/{name}" for c in CFG.paper.cohorts]


def paper_inspection_dirs():
    return [f"results/paper/inspection/{c}" for c in CFG.paper.cohorts]


def paper_cohort_inputs(wildcards):
    """What `healnet paper cohort` reads besides labels and folds: every paper model's runs, their data."""
    c = wildcards.cohort
    dirs = cohort_runs(c, paper_models(c))
    return {
        "runs": [
            f"{r}/{f}"
            for r in dirs
            for f in (runs.CHECKPOINT, runs.RUN_JSON, runs.PREDICTIONS)
        ],
        **model_data_inputs(c, paper_models(c)),
    }


def paper_cohort_keys(wildcards):
    """Published column of each paper cohort (TCGA-BLCA -> blca; else the cohort's name)."""
    from healnet.paper.tables import published_key

    return " ".join(published_key(c, cohort(c).gdc_project) for c in CFG.paper.cohorts)


def paper_modalities_json(wildcards):
    """{model: modalities} of the paper models, as JSON (unimodal vs multimodal)."""
    import json

    return json.dumps({m: CFG.models[m].modalities for m in CFG.paper.needed_models()})


# --- Report (healnet/report.py, workflow/report/) ---


def cohort_predictions(wildcards):
    """predictions.tsv of every model and fold of the cohort (the Kaplan-Meier plot's input)."""
    dirs = cohort_runs(wildcards.cohort, cohort_models(wildcards.cohort))
    return [f"{r}/{runs.PREDICTIONS}" for r in dirs]


# --- WSI (healnet/wsi, rules/wsi.smk) ---


def feature_stores(wildcards):
    """The cohort's feature stores, one per slide of its sample sheet.

    Every slide has one, with its status (a failed slide's store is empty); training reads them.
    """
    c = wildcards.cohort
    encoder = encoder_of(c)
    return [f"results/{c}/features/{encoder}/{s}.zarr" for s in cohort_slides(c)]


def cohort_sheet(wildcards):
    """The cohort's sample sheet (through the demo_cohort checkpoint when generated)."""
    return sample_sheet_path(wildcards.cohort)


def encoder_json(wildcards):
    """The config entry `encoders.<encoder>` as JSON for `healnet features --encoder`."""
    return CFG.encoders[wildcards.encoder].model_dump_json()


def encoder_names_regex():
    import re

    return "|".join(re.escape(e) for e in sorted(CFG.encoders)) or "NO_ENCODER"
