"""Re-running single stages after a change, and the report, on one real run of a tiny demo cohort.

One module-scoped Snakemake run (8 patients, small slides, a random ResNet18 cut after layer2,
1 epoch, 2 folds, one model) is copied per test; each test changes something in its copy and reads
Snakemake's own plan (the jobs of `snakemake -n`, with the default profile's --rerun-incomplete) to
check that exactly the right jobs would re-run. The interrupted-extraction test kills a real
features job. The workflow is the repository's (`-s workflow/Snakefile --directory <copy>`) with
config.yaml + a small override file, the way a user runs another cohort.
"""

from __future__ import annotations

import base64
import csv
import importlib.metadata as md
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from healnet.wsi.store import read_feature_store, read_patch_store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEFILE = REPO / "workflow" / "Snakefile"
ENCODER = "tiny"
# rule all's: every people-facing output of the demo (cindex.tsv, KM plot, report tables)
TARGETS = ["results/demo/cindex.tsv", "results/demo/report/cindex.html", "results/demo/report/slides_qc.html"]
HEALNET_SMALL = {"depth": 1, "num_latents": 4, "latent_dim": 16, "heads": 2, "self_heads": 2, "dim_head": 8}
OVERRIDE = {
    "cohorts": {"demo": {"encoder": ENCODER, "models": ["healnet"], "training": {"epochs": 1}}},
    "demo": {"n_patients": 8, "slide_size_um": [800.0, 600.0]},
    "encoders": {ENCODER: {"model": "resnet18", "truncate_after": "layer2", "pretrained": False}},
    "features": {"batch_size": 16, "num_workers": 0, "device": "cpu"},
    "splits": {"n_folds": 2},
    "labels": {"edges_from": "cohort"},  # 4 training patients per fold cannot make 4 bins of their own
    "training": {"epochs": 1, "batch_size": 4, "grad_accumulation": 1, "max_patches": 16, "device": "cpu"},
    "models": {"healnet": {"params": HEALNET_SMALL}},
    "evaluation": {"inspect_thumbnail_px": 256},
}
WSI = {"tissue", "patches", "features"}
SLIDES_QC = {"slides_qc", "report_slides_table"}  # the per-cohort slide table and its report page
OMICS = {"omics", "labels", "splits"}
MODEL = {"train", "evaluate", "km_plot", "report_tables"}


def snakemake(workdir: Path, *args: str, targets=TARGETS, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the repository's workflow in `workdir` with config.yaml + the tiny override."""
    cmd = [  # targets first: options such as --rerun-triggers take several values
        str(BIN / "snakemake"),
        *targets,
        "-s",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "config.yaml"),
        str(workdir / "tiny.yaml"),
        *args,
    ]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    return result


def pending(workdir: Path, *args: str) -> dict[str, set[str]]:
    """rule -> outputs a run would (re)make: the jobs of Snakemake's dry run (`-n`), as a user sees them."""
    result = ok(snakemake(workdir, "-n", *args))
    plan: dict[str, set[str]] = defaultdict(set)
    rule = None
    for line in result.stdout.splitlines():
        if m := re.match(r"(?:local)?(?:rule|checkpoint) (\w+):$", line):
            rule = m.group(1)
        elif rule and (m := re.match(r"\s+output: (.*)$", line)):
            plan[rule].update(m.group(1).split(", "))
            rule = None
    if not plan:
        assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]
    return dict(plan)


def outputs(plan: dict[str, set[str]], rule: str) -> set[str]:
    """Slide ids (or fold/model paths) of a rule's pending outputs."""
    return {Path(p).name.split(".")[0] for p in plan.get(rule, set())}


def set_config(workdir: Path, section: str, values: dict) -> None:
    path = workdir / "tiny.yaml"
    data = yaml.safe_load(path.read_text())
    data.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(data))


def sheet(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(workdir / "data/demo/slides.tsv", sep="\t")


def mirrored_copy(src: Path, dst: Path) -> None:
    """`src`'s pixels, mirrored left-right, written as a new generic TIFF at `dst`: a slide of its own
    (a byte copy would be one file under two slide ids, which the sample sheet check rejects)."""
    import openslide

    from healnet.demo.slides import write_slide

    with openslide.OpenSlide(str(src)) as slide:
        rgb = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
        mpp = float(slide.properties["openslide.mpp-x"])
    write_slide(dst, np.ascontiguousarray(rgb[:, ::-1]), "tiff", mpp)


def replace_slide(work: Path) -> str:
    """Write another slide's pixels (mirrored) over the first generic-TIFF slide: new content, new mtime."""
    rows = sheet(work)
    tiffs = rows[rows["path"].str.endswith(".tiff")]
    target, other = tiffs["slide_id"].iloc[0], tiffs["path"].iloc[1]
    time.sleep(1.1)  # a new modification time even on coarse file systems
    mirrored_copy(work / other, work / rows.set_index("slide_id").loc[target, "path"])
    return target


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL Snakemake and every process it started (a power cut / a node lost, not a clean stop)."""
    parent = psutil.Process(proc.pid)
    family = parent.children(recursive=True) + [parent]
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)


def features_job(proc: subprocess.Popen, slide: str) -> psutil.Process | None:
    """The running `healnet features` process of `slide` that Snakemake started, if any."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if any(Path(c).name == "healnet" for c in cmd[:2]) and "features" in cmd and any(slide in c for c in cmd):
            return child
    return None


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The tiny demo cohort, run once for real through every stage."""
    root = tmp_path_factory.mktemp("rerun") / "base"
    root.mkdir()
    (root / "tiny.yaml").write_text(yaml.safe_dump(OVERRIDE))
    ok(snakemake(root, "--cores", "2"))
    return root


@pytest.fixture
def work(base: Path, tmp_path: Path) -> Path:
    """A copy of the finished run (modification times and .snakemake metadata kept)."""
    dst = tmp_path / "work"
    shutil.copytree(base, dst, symlinks=True)
    return dst


def test_complete_run_has_nothing_to_do(base, work):
    slides = list(sheet(work)["slide_id"])
    assert len(slides) >= 6
    for s in slides:  # every slide went through every WSI stage
        assert (work / f"results/demo/features/{ENCODER}/{s}.zarr/zarr.json").is_file()
    assert pending(work) == {}  # and Snakemake says "Nothing to be done" (checked in pending)


def test_inprocess_runner_makes_what_snakemake_makes(base, tmp_path):
    """`run_demo` runs the jobs of Snakemake's own plan in one process: the files Snakemake makes for
    cindex.tsv, with the same content."""
    from healnet.config import load_config
    from healnet.demo.inprocess import run_demo

    inprocess = tmp_path / "inprocess"
    table = run_demo(load_config(REPO / "config.yaml", base / "tiny.yaml"), inprocess)

    def made(root: Path) -> set[str]:
        return {
            str(p.relative_to(root))
            for top in ("data", "results", "logs")
            for p in (root / top).rglob("*")
            if p.is_file()
        }

    ours = made(inprocess)
    assert ours <= made(base), sorted(ours - made(base))[:10]
    assert {
        "results/demo/cindex.tsv",
        "results/demo/labels.tsv",
        "results/demo/models/healnet/fold1/checkpoint.pt",
        "logs/demo/evaluate.log",
        f"results/demo/features/{ENCODER}/{sheet(base)['slide_id'].iloc[0]}.zarr/zarr.json",
    } <= ours
    for name in (
        "results/demo/cindex.tsv",
        "results/demo/labels.tsv",
        "results/demo/splits/fold0.tsv",
        "results/demo/models/healnet/fold0/predictions.tsv",
        "data/demo/slides.tsv",
    ):
        assert (inprocess / name).read_bytes() == (base / name).read_bytes(), name
    assert list(table["model"].unique()) == ["healnet"]


def test_tissue_parameter_reruns_wsi_chain_and_downstream_not_omics(work):
    set_config(work, "tissue", {"median_blur_um": 40.0})
    plan = pending(work)
    slides = set(sheet(work)["slide_id"])
    assert set(plan) == WSI | SLIDES_QC | MODEL
    for rule in WSI:
        assert outputs(plan, rule) == slides, rule
    assert not OMICS & set(plan)
    # the documented escape hatch: only modification times count, so nothing re-runs
    assert pending(work, "--rerun-triggers", "mtime") == {}


def test_training_parameter_reruns_only_training_and_evaluation(work):
    set_config(work, "training", {"weight_decay": 0.001})
    plan = pending(work)
    assert set(plan) == MODEL
    assert plan["train"] == {
        f"results/demo/models/healnet/fold{k}/{f}"
        for k in range(2)
        for f in ("checkpoint.pt", "run.json", "predictions.tsv", "train_log.tsv")
    }


def test_replaced_slide_reruns_only_its_chain_then_training(work):
    target = replace_slide(work)
    plan = pending(work)
    assert set(plan) == WSI | SLIDES_QC | MODEL
    for rule in WSI:
        assert outputs(plan, rule) == {target}, rule


def test_forcerun_of_one_slide_reruns_only_its_chain(work):
    """The documented fix when a replaced file kept its old modification time."""
    slide = sheet(work)["slide_id"].iloc[0]
    plan = pending(work, "--forcerun", f"results/demo/tissue/{slide}.geojson")
    assert set(plan) == WSI | SLIDES_QC | MODEL
    for rule in WSI:
        assert outputs(plan, rule) == {slide}, rule


def test_added_slide_runs_only_the_new_slides_chain_then_training(work):
    rows = sheet(work)
    src = rows[rows["path"].str.endswith(".tiff")].iloc[0]
    case = rows["case_id"].value_counts().index[-1]  # a patient with one slide gets a second
    new_id = f"{case}-DX9"
    new_path = f"data/demo/slides/{new_id}.tiff"
    mirrored_copy(work / src["path"], work / new_path)
    added = pd.concat([rows, pd.DataFrame([{"case_id": case, "slide_id": new_id, "path": new_path}])])
    added.to_csv(work / "data/demo/slides.tsv", sep="\t", index=False)
    plan = pending(work)
    assert set(plan) == WSI | SLIDES_QC | MODEL
    for rule in WSI:
        assert outputs(plan, rule) == {new_id}, rule
    assert "demo_cohort" not in plan  # the edited sheet is the user's, not regenerated


def test_changed_omics_table_reruns_omics_labels_splits_training_no_wsi(work):
    table = work / "data/demo/clinical_omics.csv"
    with open(table, newline="") as fh:
        rows = list(csv.reader(fh))
    col = next(i for i, name in enumerate(rows[0]) if name.endswith("_rnaseq"))
    row = next(r for r in rows[1:] if r[col] != "")
    row[col] = repr(float(row[col]) + 1.0)
    with open(table, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    plan = pending(work)
    assert set(plan) == OMICS | MODEL
    assert outputs(plan, "splits") == {"fold0", "fold1"}


def test_interrupted_feature_extraction_recomputes_that_slide_only(work):
    """A slide was replaced; the run re-making its chain dies (SIGKILL) inside `healnet features`."""
    slides = list(sheet(work)["slide_id"])
    slide = replace_slide(work)
    store = work / f"results/demo/features/{ENCODER}/{slide}.zarr"
    others = [s for s in slides if s != slide]
    before = {s: (work / f"results/demo/features/{ENCODER}/{s}.zarr/zarr.json").stat().st_mtime_ns for s in others}
    cmd = [
        str(BIN / "snakemake"),
        *TARGETS,
        "-s",
        str(SNAKEFILE),
        "--directory",
        str(work),
        "--configfile",
        str(REPO / "config.yaml"),
        str(work / "tiny.yaml"),
        "--cores",
        "1",
    ]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 180
        while (job := features_job(proc, slide)) is None:  # tissue and patches of the slide run first
            assert proc.poll() is None, "snakemake ended before the features job could be interrupted"
            assert time.monotonic() < deadline, "the features job did not start within 180 s"
            time.sleep(0.02)
        time.sleep(0.5)  # mid-way: the job is loading the encoder / reading the slide
        assert job.is_running(), "the features job finished before it could be interrupted"
    finally:
        kill_tree(proc)
    # nothing that looks complete: Snakemake removed the old store at job start and the new one was
    # never renamed into place; a temporary sibling, if the writer got that far, is hidden and says so
    assert not store.exists()
    leftovers = [p.name for p in store.parent.iterdir() if p.name.startswith(f".{slide}.zarr")]
    assert all(".tmp-" in name for name in leftovers), leftovers
    ok(snakemake(work, "--unlock"))  # a killed Snakemake leaves its lock: the documented first step
    plan = pending(work)
    assert set(plan) == {"features"} | SLIDES_QC | MODEL  # tissue and patches had finished
    assert outputs(plan, "features") == {slide}
    # the re-run makes that store, complete, from the new slide's patches, and touches no other
    ok(snakemake(work, "--cores", "2", targets=[str(store.relative_to(work))]))
    again = read_feature_store(store)
    patches = read_patch_store(work / f"results/demo/patches/{slide}.zarr")
    assert again.status == "ok" and len(again.features) == len(patches.coords) > 0
    np.testing.assert_array_equal(again.coords, patches.coords)
    for s in others:
        assert (work / f"results/demo/features/{ENCODER}/{s}.zarr/zarr.json").stat().st_mtime_ns == before[s]


def report_entry(html: str, name: str) -> bytes:
    """The embedded content of one report entry (a data: URI with `filename=<name>`)."""
    m = re.search(r"filename=" + re.escape(name) + r";base64,([A-Za-z0-9+/=]+)", html)
    assert m, f"{name} is not embedded in the report"
    return base64.b64decode(m.group(1))


def test_report_contains_qc_tables_km_and_attention(work):
    report = work / "results" / "report.html"
    ok(snakemake(work, "--report", str(report)))
    html = report.read_text()
    slides = list(sheet(work)["slide_id"])
    for s in slides:  # QC thumbnails, one per slide, each a PNG
        assert report_entry(html, f"{s}.png")[:4] == b"\x89PNG", s
    assert report_entry(html, "km.png")[:4] == b"\x89PNG"
    # tables as HTML pages (the report shows those inline), with their values
    cindex = report_entry(html, "cindex.html").decode()
    table = pd.read_csv(work / "results/demo/cindex.tsv", sep="\t")
    assert "<table" in cindex and "healnet" in cindex and f"{table['cindex'].iloc[0]:.4g}" in cindex
    assert "<table" in report_entry(html, "cindex_missing.html").decode()
    assert "log-rank" in html and "p_value" in report_entry(html, "km_logrank.html").decode()
    # the stack evaluate ran with (results/demo/versions.tsv, beside cindex.tsv)
    versions = report_entry(html, "versions.html").decode()
    assert "<table" in versions and f"<td>{md.version('torch')}</td>" in versions and "Software" in html
    qc = report_entry(html, "slides_qc.html").decode()
    assert all(s in qc for s in slides) and "n_patches" in qc
    heatmaps = pd.read_csv(work / "results/demo/inspect/index.tsv", sep="\t")
    pngs = heatmaps[heatmaps["file"].str.endswith(".png")]["file"]
    assert len(pngs) >= 1 and all(report_entry(html, f)[:4] == b"\x89PNG" for f in pngs)
    # categories and captions (rendered from workflow/report/*.rst, wildcards filled in)
    for text in (
        "Slides",
        "Evaluation",
        "Attention",
        "median predicted risk",
        "Concordance index",
        "Tissue detection of one slide",
        "healnet-pipeline: from whole-slide",
    ):
        assert text in html, text
    assert re.search(r"Kaplan-Meier curves of cohort .{0,20}demo", html)


# --- every snakemake command the docs show, as written ---

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "profiles/slurm/README.md"]


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for each `snakemake ...` line of a fenced code block in the user docs."""
    found = []
    for doc in DOCS:
        fenced = False
        for line in doc.read_text().splitlines():
            if line.strip().startswith("```"):
                fenced = not fenced
                continue
            command = line.strip().removeprefix("$ ").split("  #")[0].strip()
            if fenced and command.startswith("snakemake "):
                found.append((doc.relative_to(REPO).as_posix(), command))
    return list(dict.fromkeys(found))


def test_docs_show_snakemake_commands():
    commands = [c for _, c in documented_commands()]
    assert len(commands) >= 15, commands  # the parser still finds them
    assert "snakemake --cores 8 results/blca/cindex.tsv" in commands  # the used-by command


def test_every_documented_snakemake_command_runs_as_written(work):
    """Each command from the user's shell in a checkout (no -s, no --directory, no activated venv):
    a dry run (`-n` appended), or for real where it runs no job (`--report`, `--unlock`) on the finished
    demo. Placeholders take the demo's values; a report of another cohort is built for the demo."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    from healnet.config import merge_into

    (work / "config.yaml").write_text(
        yaml.safe_dump(merge_into(config, yaml.safe_load((work / "tiny.yaml").read_text())))
    )
    for name in ("workflow", "profiles"):
        (work / name).symlink_to(REPO / name)
    (work / "my_cohorts.yaml").write_text(
        yaml.safe_dump(
            {
                "cohorts": {  # the docs' examples of my_cohorts.yaml
                    "mine": {"slides": "data/demo/slides.tsv", "clinical_omics": "data/demo/clinical_omics.csv"},
                    "blca_try": {"gdc_project": "TCGA-BLCA", "gdc_max_files": 10},
                }
            }
        )
    )
    (work / "extra.yaml").write_text(yaml.safe_dump({"paper": {"cohorts": ["blca", "brca", "kirp", "ucec"]}}))
    slide = sheet(work)["slide_id"].iloc[0]
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = f"{BIN}:/usr/bin:/bin"  # `snakemake` found as typed; `healnet` is not on PATH
    failures = []
    for doc, command in documented_commands():
        argv = shlex.split(command.replace("<slide_id>", slide).replace("<encoder>", ENCODER))
        if "--report" in argv:
            argv = [a.replace("blca", "demo") for a in argv]
        elif "--unlock" not in argv:
            argv.append("-n")
        result = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=300, env=env)
        if result.returncode != 0:
            failures.append(f"{doc}: {command}\n{(result.stdout + result.stderr)[-1500:]}")
    assert not failures, "\n\n".join(failures)
