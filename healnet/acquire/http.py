"""HTTP with patience: retries with backoff, resumable verified downloads, atomic placement.

One downloader serves both the GDC slides (md5 from the manifest) and the pinned omics tables
(sha256 from the config). A download streams into `.<name>.part` next to the destination; after
a broken connection it asks for the rest with an HTTP Range request, and the part file also
survives a killed job, so the next run resumes instead of starting over. Only a file whose
checksum matches is renamed into place; a mismatch removes the part file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # 1 MiB blocks for hashing
# Network reads: a block cut short by a broken connection is lost (urllib3 drops partial reads),
# so keep blocks small; a resume then re-fetches at most 64 KiB.
NET_CHUNK = 1 << 16
MAX_BACKOFF_S = 120.0
RETRY_STATUS = {429, 500, 502, 503, 504}
# Failures after which a retry may succeed: the connection broke, stalled, or never opened.
TRANSIENT_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry; built from the `gdc` config section."""

    retries: int = 8
    backoff_s: float = 2.0
    connect_timeout_s: float = 30.0
    read_timeout_s: float = 120.0

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout_s, self.read_timeout_s)

    def wait(self, failures: int) -> float:
        """Exponential backoff: backoff_s, 2x, 4x, ... capped at MAX_BACKOFF_S."""
        return min(self.backoff_s * 2 ** max(failures - 1, 0), MAX_BACKOFF_S)


class TransientHTTPError(Exception):
    """A response worth retrying (5xx, 429)."""


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


def check_status(response: requests.Response, what: str) -> None:
    """Raise TransientHTTPError for retryable statuses and a user-facing error for the rest."""
    code = response.status_code
    if code in RETRY_STATUS:
        raise TransientHTTPError(f"{what}: HTTP {code}")
    if code in (401, 403):
        raise RuntimeError(
            f"{what}: access denied (HTTP {code}). Controlled-access GDC files need a token: download one "
            "from the GDC portal and set `gdc.token_file` in the config (keep the file private)."
        )
    if code == 404:
        raise FileNotFoundError(f"{what}: not found (HTTP 404); check the id or URL (and `gdc.base_url`)")
    if code >= 400:
        raise RuntimeError(f"{what}: HTTP {code}: {_server_message(response)}")


def _server_message(response: requests.Response) -> str:
    try:
        return str(response.json().get("message", response.text[:300]))
    except ValueError:
        return response.text[:300]


def request_json(
    session: requests.Session, method: str, url: str, policy: RetryPolicy, what: str, **kwargs: Any
) -> dict:
    """One API call returning JSON, retried on transient failures."""
    failures = 0
    while True:
        try:
            response = session.request(method, url, timeout=policy.timeout, **kwargs)
            check_status(response, what)
            try:
                return response.json()
            except ValueError:
                raise RuntimeError(
                    f"{what}: the answer from {url} is not JSON ({response.text[:80]!r}); "
                    "is `gdc.base_url` the GDC API (https://api.gdc.cancer.gov)?"
                ) from None
        except (TransientHTTPError, *TRANSIENT_ERRORS) as err:
            failures += 1
            if failures > policy.retries:
                raise RuntimeError(
                    f"{what}: gave up after {policy.retries} retries ({err}); is {url} reachable? "
                    "Retry later or raise `gdc.retries`."
                ) from None
            wait = policy.wait(failures)
            log.warning("%s: %s; retry %d/%d in %.1f s", what, err, failures, policy.retries, wait)
            time.sleep(wait)


def part_path(dest: Path) -> Path:
    """Where an unfinished download of `dest` lives (same folder, so the final rename is atomic)."""
    return dest.with_name(f".{dest.name}.part")


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_once(
    session: requests.Session,
    url: str,
    part: Path,
    size: int | None,
    headers: dict[str, str],
    policy: RetryPolicy,
    what: str,
) -> None:
    """Stream (the rest of) `url` into `part`; transient failures raise for the caller to retry."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        log.warning("%s: partial file %s is larger than the file (%d > %d); starting over", what, part, offset, size)
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return
    request_headers = dict(headers)
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=request_headers, stream=True, timeout=policy.timeout) as response:
        if response.status_code == 416 and offset:
            # Range not satisfiable: the part file is complete already (the checksum decides) or stale.
            if size is not None and offset < size:
                part.unlink()
                raise TransientHTTPError(f"{what}: server refused to resume at byte {offset}; starting over")
            return
        check_status(response, what)
        if offset and response.status_code == 206:
            start = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if start != str(offset):
                raise RuntimeError(f"{what}: server answered Range {offset}- with Content-Range {start}-")
            mode = "ab"
        else:
            if offset:
                log.info("%s: server ignored the Range request; downloading from the start", what)
            offset, mode = 0, "wb"
        total = size if size is not None else _content_length(response, offset)
        with (
            open(part, mode) as fh,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=what,
                mininterval=1.0,
                disable=None,
                leave=False,
            ) as bar,
        ):
            for block in response.iter_content(NET_CHUNK):
                fh.write(block)
                bar.update(len(block))


def _content_length(response: requests.Response, offset: int) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) + offset if value and value.isdigit() else None


def download(
    url: str,
    dest: str | Path,
    *,
    checksum: tuple[str, str],
    size: int | None = None,
    headers: dict[str, str] | None = None,
    policy: RetryPolicy = RetryPolicy(),
    what: str | None = None,
    session: requests.Session | None = None,
) -> Path:
    """Download `url` to `dest`, resuming after breaks, verifying `checksum` = (algorithm, hex digest).

    Retries count consecutive failures without progress, so a long download over a flaky link
    still finishes as long as each attempt moves it forward.
    """
    dest = Path(dest)
    what = what or dest.name
    algorithm, expected = checksum[0], checksum[1].lower()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    session = session or requests.Session()
    started, failures = time.monotonic(), 0
    start_bytes = part.stat().st_size if part.exists() else 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _fetch_once(session, url, part, size, headers or {}, policy, what)
            got = part.stat().st_size if part.exists() else 0
            if size is None or got >= size:
                break
            raise TransientHTTPError(f"{what}: connection closed at {got} of {size} bytes")
        except (TransientHTTPError, *TRANSIENT_ERRORS) as err:
            after = part.stat().st_size if part.exists() else 0
            failures = 0 if after > before else failures + 1  # progress resets the count
            if failures > policy.retries:
                raise RuntimeError(
                    f"{what}: download from {url} failed {failures} times in a row ({err}); the partial file "
                    f"{part} is kept and the next run resumes it. Retry later or raise `gdc.retries`."
                ) from None
            wait = policy.wait(max(failures, 1))
            log.warning("%s: %s at byte %d; resuming in %.1f s", what, type(err).__name__, after, wait)
            time.sleep(wait)
    actual = file_digest(part, algorithm)
    if actual != expected:
        got = part.stat().st_size
        part.unlink()
        raise RuntimeError(
            f"{what}: {algorithm} mismatch for {url}: expected {expected}, got {actual} ({got} bytes); "
            f"the download was removed and {dest} not written. Run again; if it persists, the file changed "
            "at the source: update the pinned checksum (or rebuild the GDC manifest)."
        )
    os.replace(part, dest)
    seconds = max(time.monotonic() - started, 1e-6)
    fetched = dest.stat().st_size - start_bytes
    log.info(
        "%s: %s verified, %.1f MB in %.1f s (%.1f MB/s)",
        dest,
        algorithm,
        fetched / 1e6,
        seconds,
        fetched / 1e6 / seconds,
    )
    return dest
