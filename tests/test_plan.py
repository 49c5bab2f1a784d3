"""What the rules ask of the config (healnet/plan.py), the GDC manifest check, and the in-process
runner's reading of Snakemake's plan: unit tests without Snakemake."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from healnet import plan
from healnet.acquire.gdc import ManifestQuery, check_manifest_query, write_manifest
from healnet.config import parse_config
from healnet.demo.inprocess import Job, inputs_first, planned_jobs


def config(tmp_path: Path, **extra):
    """demo (synthetic), blca (GDC, pinned downloads), local (own table and splits), omics (no slides)."""
    splits = tmp_path / "splits"
    splits.mkdir(exist_ok=True)
    for k in range(3):
        (splits / f"splits_{k}.csv").write_text("train,val\n")
    data = {
        "cohorts": {
            "demo": {"synthetic": True, "slides": "data/demo/slides.tsv", "clinical_omics": "data/demo/t.csv"},
            "blca": {"gdc_project": "TCGA-BLCA"},
            "local": {"slides": "s.tsv", "clinical_omics": "t.csv", "splits": str(splits)},
            "omics": {"clinical_omics": "t.csv", "wsi": False},
        },
        "encoders": {"tiny.v2": {"model": "resnet18"}},
        "features": {"encoder": "tiny.v2"},
        "models": {
            "healnet": {"architecture": "healnet", "modalities": ["wsi", "omics"]},
            "snn": {"architecture": "snn", "modalities": ["omics"]},
            "abmil": {"architecture": "abmil", "modalities": ["wsi"]},
        },
        "training": {"models": ["healnet"]},
        "paper": {"cohorts": ["omics", "demo"], "models": ["snn", "abmil", "healnet"], "references": []},
        **extra,
    }
    return parse_config(data)


def test_wildcard_patterns_match_exactly_the_names_of_each_kind(tmp_path):
    cfg = config(tmp_path)
    expected = {
        "cohort": ["blca", "demo", "local", "omics"],
        "synthetic_cohort": ["demo"],
        "gdc_cohort": ["blca"],
        "table_cohort": ["blca"],  # the pinned PORPOISE table of a known TCGA project
        "splits_cohort": ["blca"],
        "paper_cohort": ["demo", "omics"],
        "model": ["abmil", "healnet", "snn"],
        "encoder": ["tiny.v2"],
    }
    for what, names in expected.items():
        pattern = plan.wildcard_pattern(cfg, what)
        everything = ["blca", "demo", "local", "omics", "abmil", "healnet", "snn", "tiny.v2", "tinyxv2", "demo2"]
        assert [n for n in everything if re.fullmatch(pattern, n)] == names, what
    assert plan.wildcard_pattern(cfg, "encoder") == r"tiny\.v2"  # a dot is not "any character"
    no_gdc = parse_config({"cohorts": {"x": {"clinical_omics": "t.csv"}}})
    assert plan.wildcard_pattern(no_gdc, "gdc_cohort") == "NO_GDC_COHORT"
    assert plan.wildcard_pattern(no_gdc, "paper_cohort") == "NO_PAPER_COHORT"
    with pytest.raises(ValueError, match="unknown wildcard choice 'cohorts'; known: cohort, synthetic_cohort"):
        plan.wildcard_pattern(cfg, "cohorts")


def test_folds_come_from_pins_files_or_the_config(tmp_path):
    cfg = config(tmp_path, splits={"n_folds": 4})
    assert plan.n_folds(cfg, "blca") == 5  # one pinned download per fold
    assert plan.n_folds(cfg, "local") == 3  # splits_0..2.csv
    assert plan.n_folds(cfg, "demo") == 4  # generated
    assert plan.split_files(cfg, "local") == [str(tmp_path / "splits" / f"splits_{k}.csv") for k in range(3)]
    assert plan.split_files(cfg, "demo") == []


def test_provided_split_files_must_be_numbered_from_zero(tmp_path):
    cfg = config(tmp_path)
    (tmp_path / "splits" / "splits_1.csv").unlink()
    with pytest.raises(ValueError, match=r"fold numbers \[0, 2\] must run 0..1"):
        plan.n_folds(cfg, "local")
    for f in (tmp_path / "splits").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=f"cohorts.local.splits: no splits_\\*.csv files in {tmp_path / 'splits'}"):
        plan.n_folds(cfg, "local")


def test_paper_models_leave_slide_only_models_out_without_slides(tmp_path):
    cfg = config(tmp_path)
    # paper.models, then missing_model (healnet) and its unimodal pair (abmil, snn), then inspect_model
    assert plan.paper_models(cfg, "demo") == ["snn", "abmil", "healnet"]
    assert plan.paper_models(cfg, "omics") == ["snn", "healnet"]  # abmil sees only slides


def test_model_data_inputs_read_the_sheet_only_for_slide_models(tmp_path):
    cfg = config(tmp_path)

    def no_sheet(name):
        raise AssertionError(f"the sample sheet of {name} was asked for an omics-only model")

    assert plan.model_data_inputs(cfg, "blca", ["snn"], no_sheet, no_sheet) == {"omics": "results/blca/omics.tsv.gz"}
    inputs = plan.model_data_inputs(cfg, "local", ["abmil"], lambda name: f"{name}.tsv", lambda name: ["s1", "s2"])
    assert inputs == {
        "sheet": "local.tsv",
        "features": ["results/local/features/tiny.v2/s1.zarr", "results/local/features/tiny.v2/s2.zarr"],
    }
    fused = plan.model_data_inputs(cfg, "omics", ["healnet"], lambda name: None, no_sheet)
    assert fused == {"omics": "results/omics/omics.tsv.gz"}  # no slides: WSI missing for everyone


def test_gene_family_files_are_inputs_and_pinned_ones_must_be_known(tmp_path):
    from healnet.config import ConfigError

    families = {
        "architecture": "mcat",
        "modalities": ["wsi", "omics"],
        "params": {"signatures": "data/reference/signatures.csv"},
    }
    base = {
        "healnet": {"architecture": "healnet", "modalities": ["wsi", "omics"]},
        "snn": {"architecture": "snn", "modalities": ["omics"]},
        "abmil": {"architecture": "abmil", "modalities": ["wsi"]},
    }
    models = {**base, "mcat": families}
    cfg = config(tmp_path, models=models)
    inputs = plan.model_data_inputs(cfg, "omics", ["mcat", "snn"], lambda name: None, lambda name: [])
    assert inputs == {"omics": "results/omics/omics.tsv.gz", "signatures": ["data/reference/signatures.csv"]}
    assert re.fullmatch(plan.wildcard_pattern(cfg, "reference"), "signatures.csv")
    own = {**families, "params": {"signatures": "my/families.csv"}}  # a file of the user's: just an input
    assert plan.model_data_inputs(
        config(tmp_path, models={**base, "mcat": own}), "omics", ["mcat"], lambda n: None, list
    ) == {
        "omics": "results/omics/omics.tsv.gz",
        "signatures": ["my/families.csv"],
    }
    unknown = {**families, "params": {"signatures": "data/reference/hallmarks.csv"}}
    with pytest.raises(
        ConfigError, match=r"models.mcat.params.signatures: data/reference/hallmarks.csv .*reference_files"
    ):
        config(tmp_path, models={**base, "mcat": unknown})


def test_sheet_mpp_is_the_number_or_empty():
    assert plan.sheet_mpp(float("nan")) == "" and plan.sheet_mpp(None) == "" and plan.sheet_mpp("") == ""
    assert plan.sheet_mpp(0.25) == 0.25 and plan.sheet_mpp("0.5") == 0.5


def test_untracked_params_show_their_text():
    value = plan.Untracked('{"retries": 3}')
    assert str(value) == '{"retries": 3}' and f"--params {value}" == '--params {"retries": 3}'


def test_rules_find_the_healnet_beside_this_python(tmp_path):
    env = plan.rule_environment(tmp_path / "repo" / "workflow", {"PATH": "/usr/bin:/bin", "HEALNET_WARM": "1"})
    assert env == {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HEALNET_REPO": str(tmp_path / "repo"),
        "HEALNET_WARM": "0",  # off unless a local run's onstart says so: cluster jobs inherit the shell's
    }


def test_manifest_query_of_a_cohort_and_its_check(tmp_path):
    import pandas as pd

    cfg = parse_config(
        {"cohorts": {"b": {"gdc_project": "TCGA-BLCA", "gdc_cases": ["TCGA-ZZ-2", "TCGA-ZZ-1"], "gdc_max_files": 3}}}
    )
    wanted = ManifestQuery.of_cohort(cfg.cohorts["b"])
    assert wanted == ManifestQuery("TCGA-BLCA", ["TCGA-ZZ-1", "TCGA-ZZ-2"], 3)
    assert wanted.cli_args() == "--max-files 3 --cases TCGA-ZZ-1 TCGA-ZZ-2"
    assert ManifestQuery("TCGA-BLCA").cli_args() == ""
    path = tmp_path / "gdc_manifest.tsv"
    manifest = pd.DataFrame(
        {"file_id": ["i"], "file_name": ["a.svs"], "md5sum": ["0" * 32], "file_size": [1], "case_id": ["TCGA-ZZ-1"]}
    )
    write_manifest(manifest, wanted, path)
    check_manifest_query(path, "b", wanted)  # built for this query: reused
    with pytest.raises(
        ValueError,
        match=r"built for TCGA-BLCA, 2 listed case\(s\), at most 3 files, but the config .* "
        r"asks for TCGA-BLCA, all cases, no file limit; rebuild it: "
        r"`snakemake --cores 1 .*gdc_manifest.tsv --forcerun gdc_manifest`",
    ):
        check_manifest_query(path, "b", ManifestQuery("TCGA-BLCA"))
    path.with_suffix(".json").unlink()
    with pytest.raises(ValueError, match=r"built for an unknown query \(no .json next to it\)"):
        check_manifest_query(path, "b", wanted)


def test_config_and_acquire_do_not_import_each_other():
    """The pinned sources the config fills in import nothing of the package; the download code no config."""
    code = "import sys, healnet.acquire.tables; print(sorted(m for m in sys.modules if m.startswith('healnet.')))"
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.replace(
            "'", '"'
        )
    )
    assert "healnet.config" not in loaded and "healnet.acquire.tables" in loaded
    code = "import sys, healnet.acquire.sources; print(sorted(m for m in sys.modules if m.startswith('healnet.')))"
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.replace(
            "'", '"'
        )
    )
    assert loaded == ["healnet.acquire", "healnet.acquire.sources"]


DRY_RUN = """\
Building DAG of jobs...
Job stats:
job            count
-----------  -------
demo_cohort        1
labels             1
splits             1
total              3

[Thu Dec  3 12:00:00 2026]
rule splits:
    input: results/demo/labels.tsv
    output: results/demo/splits/fold0.tsv
    log: logs/demo/splits_fold0.log
    jobid: 3
Shell command: healnet splits --labels results/demo/labels.tsv --split-files  --fold 0 \
--output results/demo/splits/fold0.tsv --log logs/demo/splits_fold0.log

[Thu Dec  3 12:00:00 2026]
rule labels:
    input: <TBD>
    output: results/demo/labels.tsv
    log: logs/demo/labels.log
    jobid: 2
    reason: Missing output files: results/demo/labels.tsv; Input files updated by another job: data/demo/slides.tsv
    wildcards: cohort=demo
    resources: tmpdir=<TBD>, mem_mb=1000
Shell command: healnet labels --table data/demo/slides.tsv --output results/demo/labels.tsv \
--params '{"n_bins": 4}' --log logs/demo/labels.log

[Thu Dec  3 12:00:00 2026]
checkpoint demo_cohort:
    output: data/demo/slides.tsv, data/demo/clinical_omics.csv
    log: logs/demo/demo_cohort.log
    jobid: 1
Shell command: healnet demo-cohort --outdir data/demo --params '{"seed": 0}' --log logs/demo/demo_cohort.log
DAG of jobs will be updated after completion.
This was a dry-run (flag -n). The order of jobs does not reflect the order of execution.
"""


def test_inprocess_runner_reads_the_jobs_of_a_dry_run():
    jobs = planned_jobs(DRY_RUN)
    assert [(job.rule, job.checkpoint, job.provisional) for job in jobs] == [
        ("labels", False, True),  # its table comes from the checkpoint: a stand-in command until it has run
        ("splits", False, True),  # after labels (its input), whatever the printed order; waits as labels does
        ("demo_cohort", True, False),
    ]
    assert jobs[1].argv == [
        "splits",
        "--labels",
        "results/demo/labels.tsv",
        "--split-files",
        "--fold",
        "0",
        "--output",
        "results/demo/splits/fold0.tsv",
        "--log",
        "logs/demo/splits_fold0.log",
    ]
    assert jobs[2].argv == [
        "demo-cohort",
        "--outdir",
        "data/demo",
        "--params",
        '{"seed": 0}',
        "--log",
        "logs/demo/demo_cohort.log",
    ]
    assert jobs[2].outputs == ["data/demo/slides.tsv", "data/demo/clinical_omics.csv"]
    assert planned_jobs("Building DAG of jobs...\nNothing to be done (all requested files are present).\n") == []
    with pytest.raises(RuntimeError, match=r"no shell command for rule\(s\) \['demo_cohort'\]"):
        planned_jobs(DRY_RUN.replace("Shell command: healnet demo-cohort", "healnet demo-cohort"))
    with pytest.raises(RuntimeError, match="rule labels runs 'cp a b', not one `healnet` command"):
        planned_jobs(re.sub(r"Shell command: healnet labels[^\n]*", "Shell command: cp a b", DRY_RUN))


def test_inprocess_jobs_run_after_the_jobs_making_their_inputs():
    jobs = [
        Job("c", ["b.txt"], ["c.txt"]),
        Job("b", ["a.txt"], ["b.txt"]),
        Job("a", [], ["a.txt"]),
        Job("x", [], ["x.txt"]),
    ]
    assert [job.rule for job in inputs_first(jobs)] == ["a", "b", "c", "x"]
    assert not any(job.provisional for job in jobs)
    jobs[2].checkpoint = True  # a: b and c wait for it, x does not
    assert [job.provisional for job in inputs_first(jobs)] == [False, True, True, False]
    with pytest.raises(RuntimeError, match="cycle"):
        inputs_first([Job("a", ["b.txt"], ["a.txt"]), Job("b", ["a.txt"], ["b.txt"])])
