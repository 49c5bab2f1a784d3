"""Warm starts (healnet/warm.py): a `healnet features` job forked from the pre-imported server writes
the same store as one run in its own process, reports its exit status and errors as that would, dies
with its caller, and falls back to running in-process where no server can be had."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from healnet import config
from healnet.wsi.stages import run_patches, run_tissue
from healnet.wsi.store import read_feature_store
from healnet.wsi.synthetic import he_image, write_slide

HEALNET = str(Path(sys.executable).parent / "healnet")
TINY = config.Encoder(model="resnet18", truncate_after="layer2", pretrained=False).model_dump_json()
FEATS = config.Features(batch_size=8, num_workers=0).model_dump_json()
FAIL = config.SlideReading(on_slide_error="fail").model_dump_json()


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """A small synthetic slide and its patch store."""
    d = tmp_path_factory.mktemp("warm")
    path = str(write_slide(d / "s.svs", he_image(1200, 900, 0.5), 0.5))
    reading, patching = config.SlideReading(), config.Patching()
    assert run_tissue(path, "s", d / "s.geojson", d / "s.png", reading, config.Tissue(), patching)["status"] == "ok"
    assert run_patches(path, "s", d / "s.geojson", d / "s_p.zarr", reading, patching)["status"] == "ok"
    return path, d / "s_p.zarr"


def features_cmd(slide_path, patches, output, log) -> list[str]:
    return [
        HEALNET,
        "features",
        "--slide",
        str(slide_path),
        "--patches",
        str(patches),
        "--output",
        str(output),
        "--encoder-name",
        "tiny",
        "--encoder",
        TINY,
        "--features",
        FEATS,
        "--reading",
        FAIL,
        "--threads",
        "1",
        "--log",
        str(log),
    ]


@pytest.fixture
def tmp():
    """A private TMPDIR, hence a server of the test's own; short, as pytest's tmp_path under xdist is too
    deep for a socket (healnet/warm.py socket_path would fall back to /tmp, shared with other tests)."""
    path = Path(tempfile.mkdtemp(prefix="hw", dir="/tmp"))
    yield path
    for sock in path.glob("healnet-warm-*/*.sock"):
        sock.unlink()  # a server whose socket is gone exits at its next check (within 5 s)
    shutil.rmtree(path, ignore_errors=True)


def env_for(tmp: Path, warm: str) -> dict[str, str]:
    return {**os.environ, "HEALNET_WARM": warm, "TMPDIR": str(tmp)}


def alive(pid: int) -> bool:
    """Running (a zombie, killed but not yet reaped by whoever adopted it, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def features_job(slide_path, patches, out: Path, tmp: Path, warm: str) -> subprocess.CompletedProcess:
    """`healnet features` as a rule runs it, into out.zarr with its log beside it."""
    cmd = features_cmd(slide_path, patches, out.with_suffix(".zarr"), out.with_suffix(".log"))
    return subprocess.run(cmd, env=env_for(tmp, warm), capture_output=True, text=True)


def server_log(tmp: Path) -> str:
    logs = list(tmp.glob("healnet-warm-*/*.log"))
    return logs[0].read_text() if logs else ""


def test_a_warm_job_writes_what_a_cold_one_does(slide, tmp, tmp_path):
    slide_path, patches = slide
    cold = features_job(slide_path, patches, tmp_path / "cold", tmp, "0")
    assert cold.returncode == 0, cold.stderr
    assert not list(tmp.glob("healnet-warm-*"))  # off: no server was asked for
    for run in ("warm1", "warm2"):
        warm = features_job(slide_path, patches, tmp_path / run, tmp, "1")
        assert warm.returncode == 0, warm.stderr
        # the worker logs to the rule's log file and to the caller's stderr (the fd itself was passed)
        assert "ran in warm-start worker" in (tmp_path / f"{run}.log").read_text()
        assert "ran in warm-start worker" in warm.stderr and "patches in" in warm.stderr
    log = server_log(tmp)
    assert log.count("listening on") == 1 and log.count("ended: status 0") == 2, log  # one server, reused
    a, b = read_feature_store(tmp_path / "cold.zarr"), read_feature_store(tmp_path / "warm2.zarr")
    assert a.features.shape[0] > 0
    np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_allclose(a.features, b.features, rtol=0, atol=1e-6)


def test_a_warm_job_fails_as_a_cold_one_does(slide, tmp, tmp_path):
    _, patches = slide
    results = [features_job(tmp_path / "missing.svs", patches, tmp_path / "out", tmp, w) for w in ("0", "1")]
    assert [r.returncode for r in results] == [1, 1]
    for r in results:
        assert "missing.svs" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "ended: status 1" in server_log(tmp)
    assert not (tmp_path / "out.zarr").exists()


def test_the_worker_dies_with_its_caller(slide, tmp, tmp_path):
    """Snakemake cancels a job by killing its process: the forked worker must not run on."""
    _, patches = slide
    fifo = tmp_path / "blocks.svs"
    os.mkfifo(fifo)  # opening it for reading waits for a writer that never comes: a job that hangs
    caller = subprocess.Popen(
        features_cmd(fifo, patches, tmp_path / "out.zarr", tmp_path / "out.log"),
        env=env_for(tmp, "1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while "worker " not in server_log(tmp) and time.monotonic() < deadline:
        assert caller.poll() is None, "the job ended on its own; it should hang on the FIFO"
        time.sleep(0.2)
    time.sleep(2)  # let the worker reach the FIFO
    assert caller.poll() is None
    worker = int(server_log(tmp).split("worker ")[1].split(":")[0])
    os.kill(worker, 0)  # running
    caller.send_signal(signal.SIGTERM)
    caller.wait(10)
    deadline = time.monotonic() + 10
    while f"worker {worker} ended: signal {signal.SIGTERM.value}" not in server_log(tmp):
        assert time.monotonic() < deadline, server_log(tmp)
        time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)


def test_a_worker_dies_with_the_server_and_its_caller_says_so(slide, tmp, tmp_path):
    _, patches = slide
    fifo = tmp_path / "blocks.svs"
    os.mkfifo(fifo)
    cmd = features_cmd(fifo, patches, tmp_path / "out.zarr", tmp_path / "out.log")
    caller = subprocess.Popen(cmd, env=env_for(tmp, "1"), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while "worker " not in server_log(tmp):
        assert time.monotonic() < deadline and caller.poll() is None, server_log(tmp)
        time.sleep(0.2)
    server = int(server_log(tmp).split("warm-start server ")[1].split(":")[0])
    worker = int(server_log(tmp).split("worker ")[1].split(":")[0])
    os.kill(server, signal.SIGKILL)
    _, err = caller.communicate(timeout=30)
    assert caller.returncode == 1 and f"the warm-start server died while running worker {worker}" in err, err
    deadline = time.monotonic() + 10
    while alive(worker):
        assert time.monotonic() < deadline, "the worker outlived its server"
        time.sleep(0.1)


def test_no_private_directory_means_the_job_runs_in_its_own_process(slide, tmp, tmp_path):
    slide_path, patches = slide
    shared = tmp / f"healnet-warm-{os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # others could plant a socket here: not used
    r = features_job(slide_path, patches, tmp_path / "out", tmp, "1")
    assert r.returncode == 0, r.stderr
    assert "warm-start worker" not in r.stderr and not list(shared.iterdir())
    assert read_feature_store(tmp_path / "out.zarr").features.shape[0] > 0


def test_a_deep_tmpdir_puts_the_socket_in_tmp(monkeypatch):
    """A socket's path has at most 107 bytes; Snakemake's or a cluster's TMPDIR can be deeper."""
    from healnet import warm

    monkeypatch.setattr(tempfile, "tempdir", "/tmp/short")
    assert str(warm.socket_path()).startswith("/tmp/short/healnet-warm-")
    monkeypatch.setattr(tempfile, "tempdir", "/scratch" + "/deep" * 20)
    path = warm.socket_path()
    assert str(path).startswith(f"/tmp/healnet-warm-{os.getuid()}/") and len(os.fsencode(path)) < 104


def test_a_server_that_failed_to_start_is_not_retried_by_every_job(slide, tmp, tmp_path, monkeypatch):
    from healnet import warm

    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    path = warm.socket_path()
    path.mkdir(parents=True)  # a folder where the socket should be: the server cannot bind, and exits
    path.parent.chmod(0o700)
    slide_path, patches = slide
    r = features_job(slide_path, patches, tmp_path / "first", tmp, "1")
    assert r.returncode == 0 and "warm-start server failed to start" in r.stderr, r.stderr
    assert "Error" in server_log(tmp) and path.with_suffix(".failed").exists()
    path.rmdir()
    attempts = server_log(tmp)
    r = features_job(slide_path, patches, tmp_path / "out", tmp, "1")
    assert r.returncode == 0, r.stderr
    assert "warm-start" not in r.stderr and not path.exists() and server_log(tmp) == attempts  # not tried
    old = time.time() - warm.RETRY_AFTER_S - 1
    os.utime(path.with_suffix(".failed"), (old, old))  # long enough ago: tried again
    r = features_job(slide_path, patches, tmp_path / "again", tmp, "1")
    assert r.returncode == 0 and "ran in warm-start worker" in r.stderr, r.stderr
