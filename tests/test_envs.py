"""Environments and rule hygiene: every rule names an env in envs/ that really holds what its
command imports, requirements.lock is compiled from setup.cfg, the envs and the running interpreter
are exactly the lock (drift fails with the fix, docs/environment.md), and every rule has log/conda
(heavy ones also benchmark, threads, resources).

The rules are read through Snakemake's own Workflow API (what Snakemake will run); the command a
rule runs is the `healnet <stage>` in its shell, and what that needs is found by following the
package's imports (ast) down to third-party modules, mapped to distributions by importlib.metadata.
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata as md
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from healnet import stack
from healnet.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
# Rules that do real work per slide / cohort / model: they must be benchmarked and sized.
HEAVY = {"tissue", "patches", "features", "train", "evaluate", "omics"}
GPU_RULES = {"features", "train"}  # the issue: `gpu` for feature extraction and training
BUILD_TOOLS = {"pip", "setuptools", "wheel"}  # needed to install the package, not by it


@pytest.fixture(scope="module")
def rules():
    """The workflow's rules, as Snakemake parses them (config.yaml, no DAG)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import OutputSettings, ResourceSettings

    cwd = os.getcwd()
    try:
        with SnakemakeApi(OutputSettings()) as api:
            wf = api.workflow(
                resource_settings=ResourceSettings(), snakefile=REPO / "workflow" / "Snakefile", workdir=REPO
            )
            return {r.name: r for r in wf._workflow.rules}
    finally:
        os.chdir(cwd)  # the API changes into workdir


def declared_keywords() -> dict[str, set[str]]:
    """rule name -> keywords written in its block (to tell `threads: 1` from the default)."""
    out: dict[str, set[str]] = {}
    for smk in sorted((REPO / "workflow").rglob("*.smk")) + [REPO / "workflow" / "Snakefile"]:
        name = None
        for line in smk.read_text().splitlines():
            m = re.match(r"(?:rule|checkpoint) (\w+):", line)
            if m:
                name = m.group(1)
                out[name] = set()
            elif line and not line[0].isspace():
                name = None
            elif name and (k := re.match(r" {4}(\w+):", line)):
                out[name].add(k.group(1))
    return out


def shell_rules(rules) -> dict:
    return {name: r for name, r in rules.items() if r.shellcmd}


def env_path(rule) -> Path:
    """The rule's `conda:` file, resolved like Snakemake does (relative to the rule's .smk file)."""
    return (Path(str(rule.snakefile)).parent / str(rule.conda_env)).resolve()


def read_env(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(conda deps, pip deps): canonical name -> the spec text after the name."""
    data = yaml.safe_load(path.read_text())
    conda, pip = {}, {}
    for dep in data["dependencies"]:
        if isinstance(dep, dict):
            for line in dep.get("pip", []):
                if line.startswith("-"):
                    continue  # options (-e, --index-url): none expected, see test below
                req = Requirement(line)
                pip[canonicalize_name(req.name)] = str(req.specifier)
        else:
            name, spec = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", dep).groups()
            conda[canonicalize_name(name)] = spec
    return conda, pip


def install_requires() -> dict[str, Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = [ln.strip() for ln in cfg["options"]["install_requires"].splitlines() if ln.strip()]
    return {canonicalize_name(Requirement(ln).name): Requirement(ln) for ln in lines}


# --- what a command imports -------------------------------------------------------------------


def module_file(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


@cache
def direct_imports(module: str, top_level_only: bool) -> tuple[frozenset[str], frozenset[str]]:
    """(healnet modules, third-party top-level names) imported by `module`'s source."""
    path = module_file(module)
    if path is None:
        return frozenset(), frozenset()
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    internal, external = set(), set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [(base, [a.name for a in node.names])]
        else:
            continue
        for base, names in targets:
            top = base.split(".")[0]
            if top == "healnet":
                internal.add(base)
                # `from healnet.x import y`: y may be a submodule
                internal.update(f"{base}.{n}" for n in names if _is_module(f"{base}.{n}"))
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                external.add(top)
    return frozenset(internal), frozenset(external)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def third_party_closure(roots: list[str], top_level_only: bool) -> set[str]:
    """Third-party modules reachable from `roots` through healnet's imports."""
    seen, todo, external = set(), list(roots), set()
    while todo:
        mod = todo.pop()
        for m in with_parents(mod):
            if m in seen:
                continue
            seen.add(m)
            # a parent package runs only its top level when a submodule is imported (healnet/__init__'s
            # lazy `load_run` import is not a dependency of `healnet omics`)
            internal, ext = direct_imports(m, top_level_only or m != mod)
            external |= ext
            todo.extend(internal)
    return external


def command_needs(command: str) -> set[str]:
    """Distributions `healnet <command>` imports: all of its module's reach (conservative: lazy
    imports included), plus what the CLI imports at start-up (every command module's top level)."""
    modules = {name: module for name, module, _ in COMMANDS}
    if command not in modules:
        raise AssertionError(f"`healnet {command}` is not a command in healnet/cli.py COMMANDS")
    top = third_party_closure(["healnet.cli", *modules.values()], top_level_only=True)
    full = third_party_closure([modules[command]], top_level_only=False)
    return {distribution_of(name) for name in top | full}


@cache
def distribution_of(top_module: str) -> str:
    dists = md.packages_distributions().get(top_module)
    if not dists:
        raise AssertionError(
            f"healnet imports {top_module!r}, which no installed distribution provides; "
            "install it and add it to setup.cfg install_requires and envs/healnet.yaml"
        )
    return canonicalize_name(dists[0])


# --- tests ------------------------------------------------------------------------------------


def test_every_rule_has_log_and_conda_and_heavy_rules_benchmark_threads_resources(rules):
    keywords = declared_keywords()
    problems = []
    for name, rule in shell_rules(rules).items():
        if not rule.log:
            problems.append(f"{name}: no log:")
        if not rule.conda_env:
            problems.append(f"{name}: no conda:")
        if name in HEAVY:
            if not rule.benchmark:
                problems.append(f"{name}: heavy rule without benchmark:")
            if "threads" not in keywords.get(name, set()):
                problems.append(f"{name}: heavy rule without threads:")
            if "mem_mb" not in rule.resources:
                problems.append(f"{name}: heavy rule without resources: mem_mb")
        if name in GPU_RULES and "gpu" not in rule.resources:
            problems.append(f"{name}: needs resources: gpu=1 (the default profile runs one GPU job at a time)")
    assert not problems, "\n".join(problems)
    assert {"omics", "labels", "splits"} <= set(rules), sorted(rules)


def test_default_profile_allows_one_gpu_job_at_a_time():
    profile = yaml.safe_load((REPO / "workflow" / "profiles" / "default" / "config.yaml").read_text())
    assert profile["resources"]["gpu"] == 1
    assert profile.get("rerun-incomplete") is True  # an interrupted store is recomputed, never read


def test_each_rule_env_exists_and_holds_what_its_command_imports(rules):
    problems = []
    checked = 0
    for name, rule in shell_rules(rules).items():
        path = env_path(rule)
        if path.parent != REPO / "envs" or not path.is_file():
            problems.append(f"{name}: conda: {rule.conda_env} is not a file in envs/")
            continue
        m = re.search(r"\bhealnet\s+([a-z][a-z0-9-]*)", rule.shellcmd)
        assert m, f"rule {name} does not call `healnet <stage>`: {rule.shellcmd!r}"
        conda, pip = read_env(path)
        missing = command_needs(m.group(1)) - set(conda) - set(pip)
        if missing:
            problems.append(f"{name} (healnet {m.group(1)}): {path.name} lacks {sorted(missing)}")
        checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 5


def test_command_needs_finds_lazy_and_transitive_imports():
    """The import walk itself: `omics` needs pandas but not torch; `train` reaches torch."""
    omics = command_needs("omics")
    assert {"pandas", "numpy", "pydantic", "pyyaml"} <= omics
    assert "torch" not in omics and "openslide-python" not in omics
    assert "torch" in command_needs("train")
    assert {"scikit-survival", "matplotlib"} <= command_needs("km-plot")


def test_package_imports_are_declared_in_setup_cfg():
    declared = set(install_requires())
    imported = third_party_closure(
        [
            f"healnet.{p.relative_to(REPO / 'healnet').with_suffix('').as_posix().replace('/', '.')}"
            for p in (REPO / "healnet").rglob("*.py")
            if p.name != "__init__.py"
        ],
        top_level_only=False,
    )
    undeclared = {f"{m} ({distribution_of(m)})" for m in imported if distribution_of(m) not in declared}
    assert not undeclared, f"healnet imports these but setup.cfg install_requires lacks them: {sorted(undeclared)}"


@pytest.mark.parametrize("env", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_pins_are_the_locks(env):
    """Every env pins exactly the lock's versions; envs/healnet.yaml is the lock, generated by `make lock`."""
    conda, pip = read_env(env)
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    python = conda["python"].lstrip("=")
    assert SpecifierSet(cfg["options"]["python_requires"]).contains(f"{python}.0"), (env.name, python)
    lines = next(d["pip"] for d in yaml.safe_load(env.read_text())["dependencies"] if isinstance(d, dict))
    assert not [ln for ln in lines if ln.startswith("-")], f"{env.name}: pip options/paths are not portable here"
    locked = stack.read_lock(LOCK)
    problems = []
    for name, spec in pip.items():
        if spec != f"=={locked.get(name)}":
            problems.append(f"{name}{spec}: the lock has {locked.get(name, 'no such package')}")
    extra_conda = set(conda) - {"python"} - BUILD_TOOLS
    if extra_conda:
        problems.append(f"conda packages outside the lock: {sorted(extra_conda)}")
    if env.name == "healnet.yaml":  # the env every stage uses carries the whole stack, as generated
        if env.read_text() != stack.env_yaml(locked, stack.lock_python(LOCK)):
            problems.append(f"{env.name} is not what `make lock` generates from {LOCK.name}")
    assert not problems, "\n".join(problems) + f"\nfix: `make lock` (regenerates {env.name} from {LOCK.name})"


def makefile_torch() -> list[str]:
    m = re.search(r"^TORCH := (.+)$", (REPO / "Makefile").read_text(), re.M)
    assert m, "Makefile: no `TORCH := torch==... torchvision==...` line"
    return m.group(1).split()


def test_lock_is_compiled_from_setup_cfg_and_the_makefiles_torch():
    torch_pins = makefile_torch()
    assert {Requirement(p).name for p in torch_pins} == {"torch", "torchvision"}
    assert all(str(Requirement(p).specifier).startswith("==") for p in torch_pins), torch_pins
    problems = stack.stale(stack.read_lock(LOCK), stack.setup_cfg_requirements() + torch_pins)
    assert not problems, f"{LOCK.name} is stale: " + "; ".join(problems) + ". Fix: `make lock`, then `make install`"
    assert stack.lock_python(LOCK) == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_installed_stack_is_the_lock():
    """The interpreter running the tests has exactly the lock's distributions (what `make install` gives);
    no skip: a drifted stack is not the one the results claim."""
    found = stack.drift(stack.read_lock(LOCK), stack.installed_versions())
    assert not found, found.message(LOCK)


def test_drift_lists_each_difference_and_the_fix():
    locked = {"numpy": "2.4.6", "torch": "2.14.1", "zarr": "3.1.6"}
    installed = {"numpy": "2.4.6", "torch": "2.13.0", "ipython": "9.0.0", "healnet-pipeline": "0.1.0"}
    found = stack.drift(locked, installed)
    assert found.differ == {"torch": ("2.14.1", "2.13.0")}
    assert found.missing == ["zarr"] and found.extra == {"ipython": "9.0.0"}  # the package itself is no drift
    msg = found.message("requirements.lock")
    assert "torch 2.14.1 -> 2.13.0" in msg and "not installed: zarr" in msg and "ipython 9.0.0" in msg
    assert "`make install`" in msg and "`make lock`" in msg
    assert not stack.drift(locked, {**locked, "healnet-pipeline": "0.1.0"})


def test_stale_names_missing_and_out_of_range_requirements():
    locked = {"numpy": "1.25.0", "pandas": "3.1.1", "torch": "2.14.1"}
    assert stack.stale(locked, ["pandas>=2.0", "torch==2.14.1"]) == []
    assert stack.stale(locked, ["numpy>=1.26", "Zarr>=3,<4"]) == [
        "numpy>=1.26 but the lock pins numpy==1.25.0",
        "Zarr<4,>=3 is not in the lock",
    ]


LOCK_SNIPPET = """\
#
# This file is autogenerated by pip-compile with Python 3.11
#
Annotated_Types==0.8.0 \\
    --hash=sha256:13b2 \\
    --hash=sha256:f072
    # via pydantic
torch==2.14.1 \\
    --hash=sha256:06c3
    # via
    #   -r -
    #   healnet-pipeline (setup.cfg)

# The following packages are considered to be unsafe in a requirements file:
pip==26.3 \\
    --hash=sha256:6c36
"""


def test_read_lock_reads_pip_compile_output_and_rejects_what_is_not_a_pin(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(LOCK_SNIPPET)
    assert stack.read_lock(lock) == {"annotated-types": "0.8.0", "torch": "2.14.1", "pip": "26.3"}
    assert stack.lock_python(lock) == "3.11"
    for bad in ("-e .\n", "numpy>=1.26\n"):
        lock.write_text(LOCK_SNIPPET + bad)
        with pytest.raises(ValueError, match=r"requirements.lock:17: .* not an exact pin .*`make lock`"):
            stack.read_lock(lock)
    with pytest.raises(FileNotFoundError, match="`make lock`"):
        stack.read_lock(tmp_path / "none.lock")


def test_env_yaml_round_trips_the_lock(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(LOCK_SNIPPET)
    env = tmp_path / "healnet.yaml"
    from healnet.cli import main

    assert main(["env-yaml", "--lock", str(lock), "--out", str(env)]) == 0
    conda, pip = read_env(env)
    assert conda["python"] == "=3.11" and pip == {"annotated-types": "==0.8.0", "torch": "==2.14.1", "pip": "==26.3"}
    assert env.read_text().startswith("# GENERATED from requirements.lock by `make lock`")


def test_versions_table_and_check_against_a_lock(tmp_path, capsys):
    """`healnet versions`: every distribution with its locked version and status; --check fails on drift
    with the fix."""
    lock = tmp_path / "requirements.lock"
    yaml_version = md.version("pyyaml")
    lock.write_text(
        f"# autogenerated by pip-compile with Python 3.11\npyyaml=={yaml_version}\nnumpy==0.0.1\nno-such-dist==1.0\n"
    )
    from healnet.cli import main

    out = tmp_path / "versions.tsv"
    assert main(["versions", "--lock", str(lock), "--out", str(out)]) == 0
    table = pd_read(out).set_index("package")
    assert table.loc["pyyaml", "status"] == "locked" and table.loc["pyyaml", "version"] == yaml_version
    assert table.loc["numpy", "status"] == "differs" and table.loc["numpy", "locked"] == "0.0.1"
    assert table.loc["no-such-dist", "status"] == "missing" and table.loc["no-such-dist", "version"] == ""
    assert table.loc["pandas", "status"] == "not in lock"
    assert table.loc["python", "version"] == platform.python_version()
    assert table.loc["healnet-pipeline", "status"] == "runtime"
    if (REPO / ".git").exists():  # a checkout: the commit the results came from
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert f"(git {head}" in table.loc["healnet-pipeline", "version"]
    warning = capsys.readouterr().err  # the run warns that its stack is not the lock
    assert "numpy 2" in warning and "(locked 0.0.1)" in warning and " more" in warning
    assert main(["versions", "--lock", str(lock), "--check"]) == 1
    error = capsys.readouterr().err
    assert "numpy 0.0.1 -> " in error and "not installed: no-such-dist" in error
    assert "Fix: `make install`" in error


def pd_read(path: Path):
    import pandas as pd

    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def test_post_deploy_installs_the_package_editable_into_a_fresh_env(tmp_path):
    """envs/healnet.post-deploy.sh, run as Snakemake would after creating the env, makes
    `import healnet` and the `healnet` script resolve to the repository given in HEALNET_REPO."""
    # a minimal copy of the repository (what setuptools reads), so the real checkout is not touched
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "healnet", repo / "healnet", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, repo / name)
    # a bare env: no pip of its own, only pip + setuptools (build tools of envs/healnet.yaml) linked in
    env = tmp_path / "env"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(env)], check=True, timeout=60)
    tools = tmp_path / "tools"
    tools.mkdir()
    for mod in ("pip", "setuptools", "_distutils_hack"):
        src = Path(importlib.util.find_spec(mod).origin).parent
        (tools / mod).symlink_to(src)
    for dist in ("pip", "setuptools"):
        info = Path(md.distribution(dist)._path)  # type: ignore[attr-defined]
        (tools / info.name).symlink_to(info)
    site = next((env / "lib").glob("python*/site-packages"))
    (site / "zz_build_tools.pth").write_text(str(tools) + "\n")
    environ = {**os.environ, "PATH": f"{env / 'bin'}:{os.environ['PATH']}", "HEALNET_REPO": str(repo)}
    environ.pop("PYTHONPATH", None)
    script = REPO / "envs" / "healnet.post-deploy.sh"
    result = subprocess.run(["bash", str(script)], env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    where = subprocess.run(
        [str(env / "bin" / "python"), "-c", "import healnet; print(healnet.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env=environ,
        cwd=tmp_path,
    ).stdout.strip()
    assert where == str(repo / "healnet" / "__init__.py")
    assert (env / "bin" / "healnet").is_file()
    # without HEALNET_REPO it fails with the fix, not with a pip traceback
    environ.pop("HEALNET_REPO")
    bad = subprocess.run(["bash", str(script)], env=environ, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "HEALNET_REPO is not set" in bad.stderr


def test_common_smk_tells_post_deploy_where_the_repository_is(rules):
    assert os.environ.get("HEALNET_REPO") == str(REPO)


def test_runtime_rows_name_the_accelerator(monkeypatch):
    """The device row says which GPU ran the evaluation (CUDA itself is absent on the test machines)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    rows = {r["package"]: r["version"] for r in stack.runtime_rows("cuda")}
    assert rows["device"] == "cuda (NVIDIA H200)" and rows["python"] == platform.python_version()
    assert rows["torch cuda"] == (torch.version.cuda or "none (CPU build)")
    assert {r["package"]: r["version"] for r in stack.runtime_rows("cpu")}["device"] == "cpu"


def test_versions_check_fails_on_a_lock_stale_against_setup_cfg(tmp_path, capsys):
    """`make install` ends with `healnet versions --check`: a requirement added to setup.cfg without
    `make lock` stops it with that fix (not with pip check's 'requires X, which is not installed')."""
    from healnet.cli import main

    (tmp_path / "setup.cfg").write_text(
        "[options]\ninstall_requires =\n    pyyaml>=6\n    zarr>=3,<4\n"
        "[options.extras_require]\ndev =\n    # why\n    pytest>=8\n"
    )
    assert stack.setup_cfg_requirements(tmp_path / "setup.cfg") == ["pyyaml>=6", "zarr>=3,<4", "pytest>=8"]
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"pyyaml=={md.version('pyyaml')}\npytest=={md.version('pytest')}\n")
    assert main(["versions", "--lock", str(lock), "--check"]) == 1
    error = capsys.readouterr().err
    assert "is stale against" in error and "zarr<4,>=3 is not in the lock" in error and "`make lock`" in error
