"""The workflow's own jobs, run in one Python process: Snakemake plans, `healnet.cli.main` executes.

On a small demo the start-up of ~4 processes per slide costs far more than the work, so tests and
benchmarks that need many patients (to compare models on test folds that are not tiny) use this
instead of Snakemake's executor. Nothing of the DAG is stated here: Snakemake's dry run
(`--dry-run --printshellcmds`) lists the jobs a target needs with their inputs, outputs and commands;
each command is one `healnet <stage> ...` call, run through `healnet.cli.main` in the working
directory, after the jobs making its inputs. Jobs after a checkpoint (the demo cohort's sample sheet)
wait: until it has run, the dry run shows them with stand-in inputs. Snakemake is asked again until
nothing is left. Outputs and logs land under `workdir` exactly where `snakemake <target>` puts them.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from tqdm import tqdm

from healnet.config import Config

log = logging.getLogger(__name__)

SNAKEFILE = Path(__file__).resolve().parents[2] / "workflow" / "Snakefile"
JOB_HEADER = re.compile(r"^(?:local)?(rule|checkpoint) (\w+):$")
FILES = re.compile(r"^    (input|output): (.*)$")
SHELL_PREFIX = "Shell command: "
UNKNOWN = "<TBD>"  # the dry run's inputs of a job after a checkpoint that has not run


@dataclass
class Job:
    rule: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    argv: list[str] | None = None  # the `healnet` command, without `healnet`
    checkpoint: bool = False
    provisional: bool = False  # after a checkpoint of the same plan: its command may still change


def planned_jobs(output: str) -> list[Job]:
    """The jobs in the text of `snakemake --dry-run --printshellcmds`, each after the jobs making its
    inputs (Snakemake says the dry run's order is not the order of execution). A job after a checkpoint
    is `provisional`: until the checkpoint has run, the dry run shows it with stand-in inputs."""
    jobs: list[Job] = []
    for line in output.splitlines():
        if match := JOB_HEADER.match(line):
            jobs.append(Job(match.group(2), checkpoint=match.group(1) == "checkpoint"))
        elif jobs and (match := FILES.match(line)):
            getattr(jobs[-1], match.group(1) + "s").extend(match.group(2).split(", "))
        elif jobs and line.startswith(SHELL_PREFIX):
            argv = shlex.split(line[len(SHELL_PREFIX) :])
            if not argv or argv[0] != "healnet":
                raise RuntimeError(
                    f"rule {jobs[-1].rule} runs {' '.join(argv)!r}, not one `healnet` command; run it with Snakemake"
                )
            jobs[-1].argv = argv[1:]
    missing = [job.rule for job in jobs if job.argv is None]
    if missing:
        raise RuntimeError(
            f"Snakemake's dry run shows no shell command for rule(s) {sorted(set(missing))}; every rule "
            "must run one `healnet` command to run in-process:\n" + output[-3000:]
        )
    return inputs_first(jobs)


def inputs_first(jobs: list[Job]) -> list[Job]:
    """`jobs` ordered so that each comes after those making its inputs, else in the given order;
    marks `provisional` the jobs after a checkpoint (inputs still unknown, or made by one)."""
    maker = {out: i for i, job in enumerate(jobs) for out in job.outputs}
    needs = [{maker[f] for f in job.inputs if f in maker} - {i} for i, job in enumerate(jobs)]
    users: list[list[int]] = [[] for _ in jobs]
    for i, need in enumerate(needs):
        for j in need:
            users[j].append(i)
    waiting = [len(need) for need in needs]
    ready = [i for i, n in enumerate(waiting) if n == 0]
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        jobs[i].provisional = UNKNOWN in jobs[i].inputs or any(
            jobs[j].checkpoint or jobs[j].provisional for j in needs[i]
        )
        for user in users[i]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) < len(jobs):
        raise RuntimeError(f"the dry run's jobs depend on each other in a cycle: {[j.rule for j in jobs]}")
    return [jobs[i] for i in order]


def snakemake_plan(workdir: Path, configfile: Path, targets: list[str]) -> list[Job]:
    """The jobs `snakemake <targets>` would run now in `workdir`, inputs first."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        *targets,
        "--snakefile",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        "--dry-run",
        "--printshellcmds",
        "--cores",
        "1",
    ]
    # one stream, so that each job's header and its command stay together
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"snakemake dry run failed (`{' '.join(cmd)}`):\n{result.stdout[-3000:]}")
    return planned_jobs(result.stdout)


def run_jobs(cfg: Config, workdir: str | Path, targets: list[str]) -> None:
    """Make `targets` (paths relative to `workdir`) with the workflow's jobs, run in this process."""
    from healnet.cli import main

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    configfile = work / "run_inprocess.yaml"
    configfile.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    done: set[tuple[str, ...]] = set()
    while jobs := [job for job in snakemake_plan(work, configfile, targets) if not job.provisional]:
        again = [job.rule for job in jobs if tuple(job.argv) in done]
        if again:
            raise RuntimeError(f"Snakemake plans the jobs of rule(s) {sorted(set(again))} again after they ran")
        for job in tqdm(jobs, desc="jobs", disable=None):
            with contextlib.chdir(work):
                if main(job.argv) != 0:
                    raise RuntimeError(f"rule {job.rule} failed (healnet {' '.join(job.argv)}); see the log above")
            done.add(tuple(job.argv))


def run_demo(cfg: Config, workdir: str | Path, cohort: str = "demo") -> pd.DataFrame:
    """Generate the demo cohort and run every stage up to cindex.tsv; returns cindex.tsv as a frame."""
    run_jobs(cfg, workdir, [f"results/{cohort}/cindex.tsv"])
    return pd.read_csv(Path(workdir) / "results" / cohort / "cindex.tsv", sep="\t", dtype={"fold": str})
