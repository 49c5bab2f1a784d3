"""Warm starts: short `healnet` stage jobs skip the torch import by forking a pre-imported server.

A local Snakemake run starts one `healnet features` process per slide. On a small slide such a
process spends ~4 of its ~5 CPU-seconds importing torch, torchvision and timm, so the demo's 165
slides cost 11 CPU-minutes of imports. With HEALNET_WARM=1 (the workflow sets it for local runs on
machines without an NVIDIA GPU, `warm_start` in config.yaml) a stage in STAGES instead asks a server,
one per user and Python, which has those libraries imported already, to fork a worker:

- the worker takes the caller's working directory, environment, umask and stdin/stdout/stderr (the
  file descriptors themselves, passed over the socket), then runs the same `healnet` command line;
- its exit status becomes the caller's; if the caller dies (Snakemake cancelling a job), the worker
  is sent SIGTERM; if the server dies, its workers get SIGKILL (PR_SET_PDEATHSIG);
- the server imports third-party libraries only, never healnet's own code, so an edit to healnet
  takes effect in the next job (one to this file, which is the server, once it has exited); it exits
  after IDLE_S seconds without work.

The server never runs torch code (no thread pool, no CUDA context exists before a fork); each worker
sets up its own. Where anything fails before a worker has started, the caller runs the stage itself,
as without warm starts (and after a server failed to start, jobs do so for RETRY_AFTER_S). Cluster
jobs never use this: a server would outlive the job that started it and run later jobs outside their
own allocation.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV_SWITCH = "HEALNET_WARM"
STAGES = frozenset({"features", "train"})
# imported once by the server; healnet's own modules are not (workers import them fresh)
PRELOAD = ("numpy", "pydantic", "torch", "torchvision", "timm", "zarr", "openslide", "PIL.Image", "tqdm")
IDLE_S = 60.0
START_TIMEOUT_S = 120.0  # a cold disk can take a minute to import torch
RETRY_AFTER_S = 600.0  # after a server failed to start, jobs run in their own process for this long
_LEN = struct.Struct("!I")  # request length prefix
_REPLY = struct.Struct("!ci")  # b"S" + worker pid when started, b"E" + status when ended

log = logging.getLogger("healnet.warm")  # also when run as __main__ (the server)


def enabled(environ=os.environ) -> bool:
    return environ.get(ENV_SWITCH, "") == "1"


def socket_path() -> Path:
    """One server per user, Python and healnet checkout: a job never lands in another stack."""
    key = f"{os.path.realpath(sys.executable)}|{Path(__file__).resolve().parent}|{sys.version}"
    name = Path(f"healnet-warm-{os.getuid()}") / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.sock"
    path = Path(tempfile.gettempdir()) / name
    if len(os.fsencode(path)) >= 104:  # a socket's path has at most 107 bytes (sun_path): a deep TMPDIR cannot
        path = Path("/tmp") / name  # hold it
    return path


def run(argv: list[str]) -> int | None:
    """Run `healnet <argv>` in a worker of the warm server; its exit status, or None where no worker
    could be started (the caller then runs the stage itself)."""
    path = socket_path()
    try:
        _private_dir(path.parent)
        conn = _connect(path) or (None if _failed_recently(path) else _start_and_connect(path))
    except OSError as err:
        log.debug("warm start unavailable (%s): running in this process", err)
        return None
    if conn is None:
        return None
    with conn:
        try:
            _send_request(conn, argv)
            kind, pid = _recv_reply(conn)
        except OSError:
            return None  # the server went away before starting a worker (idle exit): run here
        if kind != b"S":
            return None
        try:
            kind, status = _recv_reply(conn)
        except OSError:
            kind = b""  # the server closed the connection without a status: it died
        if kind != b"E":
            log.error(
                "the warm-start server died while running worker %d: rerun the job, or set warm_start: false "
                "in the config",
                pid,
            )
            return 1
    return status if status >= 0 else 128 - status


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(f"{path} is not a private directory of this user")


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def _start_and_connect(path: Path) -> socket.socket | None:
    """Start the server (one caller at a time, under a lock) and connect to it."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = _connect(path)
        if conn is not None:
            return conn  # another caller started it while we waited for the lock
        with open(path.with_suffix(".log"), "ab") as server_log:
            server = subprocess.Popen(
                [sys.executable, "-m", "healnet.warm", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=server_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and server.poll() is None:
            conn = _connect(path)
            if conn is not None:
                return conn
            time.sleep(0.05)
        if server.poll() is None:  # slow (a cold disk), not broken: later jobs will find it
            log.warning("warm-start server not up after %.0f s: running in this process", START_TIMEOUT_S)
            return None
        path.with_suffix(".failed").touch()
        log.warning(
            "warm-start server failed to start (see %s): running in this process; no new try for %.0f min",
            path.with_suffix(".log"),
            RETRY_AFTER_S / 60,
        )
        return None


def _failed_recently(path: Path) -> bool:
    """A server that failed to start is not tried again by every job (each try costs the imports)."""
    try:
        return time.time() - path.with_suffix(".failed").stat().st_mtime < RETRY_AFTER_S
    except FileNotFoundError:
        return False


def _send_request(conn: socket.socket, argv: list[str]) -> None:
    umask = os.umask(0)
    os.umask(umask)
    body = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask}).encode()
    fds = [_open_fd(fd) for fd in (0, 1, 2)]
    socket.send_fds(conn, [_LEN.pack(len(body)) + body], fds)


def _open_fd(fd: int) -> int:
    """fd itself where open, else /dev/null (a job started with a closed stdin)."""
    try:
        os.fstat(fd)
        return fd
    except OSError:
        return os.open(os.devnull, os.O_RDWR)


def _recv_reply(conn: socket.socket) -> tuple[bytes, int]:
    data = b""
    while len(data) < _REPLY.size:
        chunk = conn.recv(_REPLY.size - len(data))
        if not chunk:
            raise ConnectionResetError("connection closed")
        data += chunk
    return _REPLY.unpack(data)


# --- the server --------------------------------------------------------------------------------------


def serve(path: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s warm-start server %(process)d: %(message)s")
    # should an import ask whether CUDA is there, ask NVML: it leaves no CUDA state for the forks to inherit
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    # OpenMP and BLAS read these once, when loaded here: one thread, whichever job started the server;
    # each stage sets torch's threads from its own --threads (features, train)
    os.environ.update({var: "1" for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass  # a stack without openslide (say) still gets the rest pre-imported
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    inode = os.stat(path).st_ino
    log.info("listening on %s", path)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    workers: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, caller's connection)
    idle_since = time.monotonic()
    while True:
        for key, _ in sel.select(timeout=5.0):
            if key.data == "accept":
                _start_worker(listener, sel, workers)
            elif key.data == "worker":
                _worker_ended(key.fd, sel, workers)
            else:  # the caller's connection: readable only when it closed (the caller died)
                pid, _ = workers[key.data]
                sel.unregister(key.fileobj)
                _signal(pid, signal.SIGTERM)
        if workers:
            idle_since = time.monotonic()
        elif not _still_ours(path, inode):
            log.info("socket %s removed or taken over, exiting", path)
            return
        elif time.monotonic() - idle_since > IDLE_S:
            os.unlink(path)
            log.info("idle for %.0f s, exiting", IDLE_S)
            return


def _still_ours(path: Path, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def _start_worker(listener, sel, workers) -> None:
    conn, _ = listener.accept()
    conn.settimeout(10.0)
    try:
        request, fds = _recv_request(conn)
    except (OSError, ValueError) as err:
        log.warning("bad request: %s", err)
        conn.close()
        return
    for handler in logging.getLogger().handlers:
        handler.flush()
    pid = os.fork()
    if pid == 0:
        listener.close()
        sel.close()
        _run_worker(request, fds, conn)  # never returns
    for fd in fds:
        os.close(fd)
    log.info("worker %d: healnet %s (in %s)", pid, request["argv"][0], request["cwd"])
    pidfd = os.pidfd_open(pid)
    workers[pidfd] = (pid, conn)
    sel.register(pidfd, selectors.EVENT_READ, "worker")
    sel.register(conn, selectors.EVENT_READ, pidfd)
    try:
        conn.sendall(_REPLY.pack(b"S", pid))
    except OSError:
        _signal(pid, signal.SIGTERM)


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    if len(fds) != 3 or len(data) < _LEN.size:
        raise ValueError("expected a request with three file descriptors")
    (length,) = _LEN.unpack(data[: _LEN.size])
    body = data[_LEN.size :]
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            raise ValueError("request cut short")
        body += chunk
    return json.loads(body), fds


def _worker_ended(pidfd: int, sel, workers) -> None:
    pid, conn = workers.pop(pidfd)
    sel.unregister(pidfd)
    os.close(pidfd)
    _, wait_status = os.waitpid(pid, 0)
    status = os.waitstatus_to_exitcode(wait_status)  # negative: killed by that signal
    log.info("worker %d ended: %s", pid, f"status {status}" if status >= 0 else f"signal {-status}")
    try:
        sel.unregister(conn)
    except KeyError:
        pass  # already gone: the caller closed first
    try:
        conn.sendall(_REPLY.pack(b"E", status))
    except OSError:
        pass
    conn.close()


def _signal(pid: int, sig: int) -> None:
    """Signal a worker and what it started (its reader processes): each worker leads its own group."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _run_worker(request: dict, fds: list[int], conn: socket.socket) -> None:
    """In the forked worker: become the caller's process, run the stage, exit with its status."""
    code = 1
    try:
        conn.close()
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the server
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setpgid(0, 0)  # see _signal
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # TMPDIR is the caller's (Snakemake's per-job tmpdir)
        sys.argv = ["healnet", *request["argv"]]
        from healnet.cli import run_here

        code = run_here(request["argv"])
        _log_usage()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 - a worker must never fall back into the server's loop
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _log_usage() -> None:
    """What this worker used: Snakemake's benchmark file measures the caller, not the worker."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.info(
        "ran in warm-start worker %d: %.1f CPU-s (%.1f in its reader processes), peak RSS %.0f MB",
        os.getpid(),
        own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
        kids.ru_utime + kids.ru_stime,
        max(own.ru_maxrss, kids.ru_maxrss) / 1024,
    )


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
