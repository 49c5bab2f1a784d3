# Config and sample-sheet loading, validation, and the input functions the rules use.
# The logic lives in the `healnet` package (healnet/plan.py and the stages' modules, unit-tested);
# this file connects it to Snakemake: the validated config, checkpoints, and short accessors.
import json
import os

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

from healnet import plan, runs, warm
from healnet.acquire.gdc import ManifestQuery, check_manifest_query, indexed_manifest
from healnet.config import ConfigError, parse_config, targets_given_as_configfiles
from healnet.hardware import has_nvidia_gpu
from healnet.paper.tables import published_key
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

# GPU rules hold the workflow profile's one `gpu` while they run, so two never share the device.
# Without a GPU they run on the CPU and need not queue for it (cluster profiles set their own).
GPU_JOB = 1 if has_nvidia_gpu() else 0


# Snakemake's job-rate limiter (--max-jobs-per-timespan, default 100/1s) re-arms a 1-s timer for
# every job that finishes, and each timer re-runs the scheduler over all waiting jobs, forever: after
# N jobs the scheduler runs N times a second (snakemake PR #3744). On the demo that was ~8 of its 31
# CPU-minutes. A local run submits nothing that needs throttling, so it runs without the limiter;
# cluster runs keep it (their submissions are what it is for).
onstart:
    if workflow.local_exec and getattr(workflow, "scheduler", None) is not None:
        workflow.scheduler.job_rate_limiter = None
        logger.info(
            "local run: Snakemake's job-rate limiter is off (nothing is submitted)"
        )
    if workflow.local_exec and CFG.warm_start:
        if GPU_JOB:
            logger.info(
                "local run on a GPU machine: no warm starts (forking CUDA workers is not verified yet)"
            )
        else:
            os.environ[warm.ENV_SWITCH] = "1"
            logger.info(
                "local run: features and train jobs start from a warm server (warm_start; healnet/warm.py)"
            )


# Rules call `healnet` by name: the one beside the Python running Snakemake comes first on PATH, so
# `.venv/bin/snakemake` works without an activated venv and cluster jobs (same Python) find it too;
# with --use-conda the rule's env is activated after this, so its own `healnet` wins there.
# HEALNET_REPO names this repository for envs/healnet.post-deploy.sh (plan.rule_environment).
# (Writes, not reads, so no `envvars:`; .update() keeps `snakemake --lint` from taking them for one.)
# HEALNET_WARM is "0" here and set to "1" by onstart in a local run (healnet/warm.py): the executor is not
# known yet while the Snakefile is parsed, and cluster jobs parse it again but run no onstart.
os.environ.update(plan.rule_environment(workflow.basedir))


def wildcard_pattern(what):
    """Names a wildcard may take: `cohort`, `gdc_cohort`, `model`, ... (healnet/plan.py CHOICES)."""
    return plan.wildcard_pattern(CFG, what)


wildcard_constraints:
    cohort=wildcard_pattern("cohort"),
    slide=r"[^/]+",
    fold=r"\d+",


# --- Config sections passed to `healnet <stage>` ---


def section_json(name):
    """One validated config section as JSON, passed to `healnet <stage> --params`."""
    return getattr(CFG, name).model_dump_json()


def cohort_training_json(wildcards):
    """The `training` section with the cohort's overrides (cohorts.<c>.training), as JSON."""
    return CFG.cohort_training(wildcards.cohort).model_dump_json()


def model_training_json(wildcards):
    """How this model is trained on this cohort (`training`, then cohorts.<c>.training, then models.<m>.training)."""
    return CFG.model_training(wildcards.cohort, wildcards.model).model_dump_json()


def model_spec_json(wildcards):
    """The model's config entry (architecture, modalities, params) as JSON for `healnet train`."""
    return CFG.models[wildcards.model].model_dump_json()


def encoder_json(wildcards):
    """The config entry `encoders.<encoder>` as JSON for `healnet features --encoder`."""
    return CFG.encoders[wildcards.encoder].model_dump_json()


# --- Cohorts: sample sheets (through their checkpoints when generated), tables, folds ---


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


def cohort_slides(name):
    """Slide ids of the cohort's sample sheet, read once per process (none for omics only)."""
    path = sample_sheet_path(name)
    return [] if path is None else list(indexed_sample_sheet(path).rows)


def cohort_sheet(wildcards):
    """The cohort's sample sheet (through the demo_cohort checkpoint when generated)."""
    return sample_sheet_path(wildcards.cohort)


def slide_row(wildcards):
    path = sample_sheet_path(wildcards.cohort)
    row = indexed_sample_sheet(path).row(wildcards.slide) if path else None
    if row is None:
        raise WorkflowError(
            f"slide {wildcards.slide!r} is not in the sample sheet of cohort {wildcards.cohort!r}"
        )
    return row


def slide_path(wildcards):
    return slide_row(wildcards)["path"]


def slide_sheet_mpp(wildcards):
    """The slide's `mpp` in the sample sheet, or '' (used only when the slide's metadata has none)."""
    return plan.sheet_mpp(slide_row(wildcards)["mpp"])


def cohort_mpp(wildcards):
    """The cohort's `mpp`, or '' (used only when neither the slide nor the sheet has one)."""
    return cohort(wildcards.cohort).mpp or ""


def cohort_feature_stores(name):
    """The cohort's feature stores, one per slide of its sample sheet (a failed slide's is empty)."""
    return plan.feature_store_paths(name, CFG.cohort_encoder(name), cohort_slides(name))


def feature_stores(wildcards):
    return cohort_feature_stores(wildcards.cohort)


def clinical_omics_input(wildcards):
    """The cohort's clinical + omics table (input of the omics and labels rules)."""
    c = cohort(wildcards.cohort)
    if c.synthetic:
        return checkpoints.demo_cohort.get(cohort=wildcards.cohort).output.table
    return c.clinical_omics


def n_folds(name):
    return plan.n_folds(CFG, name)


def provided_split_files(wildcards):
    """The cohort's splits_{k}.csv files (k < n_folds); none when the folds are generated."""
    return plan.split_files(CFG, wildcards.cohort)


def cohort_fold_files(wildcards):
    return [
        f"results/{wildcards.cohort}/splits/fold{k}.tsv"
        for k in range(n_folds(wildcards.cohort))
    ]


# --- GDC cohorts and downloaded tables (healnet/acquire) ---


def gdc_manifest(name):
    """The cohort's GDC manifest, built by the gdc_manifest checkpoint when missing (or when the
    query in the config changed since), else reused as is: the pinned list of the cohort's slides.
    """
    path = checkpoints.gdc_manifest.get(cohort=name).output.manifest
    try:
        check_manifest_query(path, name, ManifestQuery.of_cohort(cohort(name)))
    except ValueError as err:
        raise WorkflowError(str(err))
    return path


def gdc_manifest_input(wildcards):
    return gdc_manifest(wildcards.cohort)


def gdc_project(wildcards):
    return cohort(wildcards.cohort).gdc_project


def gdc_query_args(wildcards):
    """Which slides the manifest lists: tracked as params, so changing them rebuilds the manifest."""
    return ManifestQuery.of_cohort(cohort(wildcards.cohort)).cli_args()


def gdc_slide_files(wildcards):
    """Every slide of the manifest, in data/{cohort}/slides/: the downloads the sheet waits for."""
    rows = indexed_manifest(gdc_manifest(wildcards.cohort))
    return [f"data/{wildcards.cohort}/slides/{name}" for name in rows]


def gdc_file(wildcards):
    """Manifest row of one slide (file_id, md5sum, file_size): what identifies the download."""
    path = gdc_manifest(wildcards.cohort)
    row = indexed_manifest(path).get(wildcards.file_name)
    if row is None:
        raise WorkflowError(
            f"data/{wildcards.cohort}/slides/{wildcards.file_name} is not in the GDC manifest {path}"
        )
    return row


def gdc_file_id(wildcards):
    return gdc_file(wildcards)["file_id"]


def gdc_md5(wildcards):
    return gdc_file(wildcards)["md5sum"]


def gdc_size(wildcards):
    return int(gdc_file(wildcards)["file_size"])


def gdc_connection(wildcards):
    """The `gdc` section (base_url, token_file, retries, timeouts) as untracked JSON."""
    return plan.Untracked(section_json("gdc"))


def reference_url(wildcards):
    return CFG.reference_files[wildcards.reference].url


def reference_sha256(wildcards):
    return CFG.reference_files[wildcards.reference].sha256


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


def cohort_models(name):
    return CFG.cohort_models(name)


def model_data_inputs(name, models):
    """Data the models read: omics matrix, and sample sheet + feature stores if any uses the slides."""
    return plan.model_data_inputs(CFG, name, models, sample_sheet_path, cohort_slides)


def train_data_inputs(wildcards):
    """What `healnet train` reads besides labels and its fold (those are named in the rule, so a
    dry run can print the command while a sample-sheet checkpoint is pending)."""
    return model_data_inputs(wildcards.cohort, [wildcards.model])


def cohort_runs(name, models):
    """results/{cohort}/models/{model}/fold{k} of every model and fold."""
    return runs.cohort_runs(name, models, n_folds(name))


def cohort_models_dir(wildcards):
    return runs.models_dir(wildcards.cohort)


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


def cohort_predictions(wildcards):
    """predictions.tsv of every model and fold of the cohort (the Kaplan-Meier plot's input)."""
    dirs = cohort_runs(wildcards.cohort, cohort_models(wildcards.cohort))
    return [f"{r}/{runs.PREDICTIONS}" for r in dirs]


# --- Paper tables and figures (healnet/paper, rules/paper.smk) ---


def paper_models(name):
    return plan.paper_models(CFG, name)


def paper_model_list(wildcards):
    return " ".join(paper_models(wildcards.cohort))


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
    return " ".join(published_key(c, cohort(c).gdc_project) for c in CFG.paper.cohorts)


def paper_modalities_json(wildcards):
    """{model: modalities} of the paper models, as JSON (unimodal vs multimodal)."""
    return json.dumps({m: CFG.models[m].modalities for m in CFG.paper.needed_models()})
