"""GDC acquisition against a loopback "GDC" serving the real slides of ../shared/data/slides.

The server implements the parts of the GDC API the pipeline uses (POST /files and /projects with
filters and pagination, GET /data/{id} with Range, X-Auth-Token) plus injectable faults: 503s, a
connection dropped mid-file, a stalled response. No test touches the internet.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import yaml

from healnet.acquire import gdc
from healnet.acquire.gdc import ManifestQuery
from healnet.acquire.http import NET_CHUNK, RetryPolicy, part_path
from healnet.acquire.sources import PORPOISE, porpoise_urls
from healnet.acquire.tables import fetch_table
from healnet.config import ConfigError, Gdc, parse_config

BIN = Path(sys.executable).parent
TOKEN = "secret-token"


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _field(record: dict, path: str) -> list:
    """All values at a dotted path, descending through lists (cases.project.project_id)."""
    values = [record]
    for part in path.split("."):
        nxt = []
        for v in values:
            v = v.get(part) if isinstance(v, dict) else None
            nxt += v if isinstance(v, list) else ([] if v is None else [v])
        values = nxt
    return values


def _matches(record: dict, flt: dict) -> bool:
    op, content = flt["op"], flt["content"]
    if op == "and":
        return all(_matches(record, f) for f in content)
    if op == "or":
        return any(_matches(record, f) for f in content)
    if op in ("in", "="):
        wanted = content["value"] if isinstance(content["value"], list) else [content["value"]]
        return bool(set(map(str, _field(record, content["field"]))) & set(map(str, wanted)))
    raise ValueError(f"unsupported filter op {op}")


def _project(record: dict, fields: list[str]) -> dict:
    """Only the requested (dotted) fields, nested the way the GDC returns them."""
    out: dict = {}
    for path in fields:
        head, _, rest = path.partition(".")
        if head not in record:
            continue
        if not rest:
            out[head] = record[head]
        elif isinstance(record[head], list):
            items = out.setdefault(head, [{} for _ in record[head]])
            for item, sub in zip(items, record[head]):
                item.update(_project(sub, [rest]))
        else:
            out.setdefault(head, {}).update(_project(record[head], [rest]))
    return out


class FakeGDC(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: list[dict], blobs: dict[str, bytes], projects: list[str]):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.blobs, self.projects = files, blobs, projects
        self.fail_503: dict[str, int] = {}  # path -> how many 503s before it works
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before the connection is cut (once)
        self.stall_s: dict[str, float] = {}  # path -> seconds of silence after the headers (once)
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.bytes_sent: dict[str, int] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: FakeGDC

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _injected_503(self) -> bool:
        left = self.server.fail_503.get(self.path, 0)
        if left:
            self.server.fail_503[self.path] = left - 1
            self._json(503, {"message": "Service Unavailable"})
        return bool(left)

    def do_POST(self) -> None:
        self.server.log.append(("POST", self.path, None))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self._injected_503():
            return
        if self.path.startswith("/portal/"):  # a web page, as when base_url names the portal, not the API
            page = b"<html>GDC Data Portal</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if self.path == "/files":
            records = self.server.files
            fields = body["fields"].split(",")
        elif self.path == "/projects":
            records = [{"project_id": p} for p in self.server.projects]
            fields = ["project_id"]
        else:
            return self._json(404, {"message": f"no endpoint {self.path}"})
        hits = [r for r in records if _matches(r, body["filters"])]
        if body.get("sort") == "file_name:asc":
            hits.sort(key=lambda r: r["file_name"])
        start, size = int(body.get("from", 0)), int(body.get("size", 10))
        page = hits[start : start + size]
        self._json(
            200,
            {
                "data": {
                    "hits": [_project(r, fields) for r in page],
                    "pagination": {"count": len(page), "total": len(hits), "size": size, "from": start},
                },
                "warnings": {},
            },
        )

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        self.server.log.append(("GET", self.path, rng))
        if self._injected_503():
            return
        if self.path.startswith("/data/"):
            file_id = self.path.removeprefix("/data/")
            record = next((r for r in self.server.files if r["file_id"] == file_id), None)
            if record is None:
                return self._json(404, {"message": f"file {file_id} not found"})
            if record["access"] == "controlled" and self.headers.get("X-Auth-Token") != TOKEN:
                return self._json(403, {"message": "controlled access; token required"})
            data = self.server.blobs[record["file_name"]]
        elif self.path.startswith("/tables/"):
            data = self.server.blobs.get(self.path.removeprefix("/tables/"))
            if data is None:
                return self._json(404, {"message": "no such table"})
        else:
            return self._json(404, {"message": "unknown path"})
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        body = data[start:]
        stall = self.server.stall_s.pop(self.path, 0)
        if stall:
            time.sleep(stall)
        cut = self.server.drop_after.pop(self.path, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.server.bytes_sent[self.path] = self.server.bytes_sent.get(self.path, 0) + cut
            self.connection.shutdown(socket.SHUT_RDWR)  # the connection breaks mid-file
            self.close_connection = True
            return
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            return
        self.server.bytes_sent[self.path] = self.server.bytes_sent.get(self.path, 0) + len(body)


def _record(file_id, file_name, case, project, data, strategy="Diagnostic Slide", fmt="SVS", access="open"):
    return {
        "file_id": file_id,
        "file_name": file_name,
        "md5sum": md5_of(data),
        "file_size": len(data),
        "data_type": "Slide Image",
        "experimental_strategy": strategy,
        "data_format": fmt,
        "access": access,
        "cases": [{"submitter_id": case, "project": {"project_id": project}}],
    }


CMU_NAME = "TCGA-ZZ-0001-01Z-00-DX1.CMU1.svs"
SMALL_NAME = "TCGA-ZZ-0001-01Z-00-DX2.SMALL.svs"
TCGA_NAME = "TCGA-ZZ-0002-01Z-00-DX1.CR7395.svs"


@pytest.fixture(scope="module")
def slides(shared_data) -> dict[str, bytes]:
    d = shared_data / "slides"
    return {
        CMU_NAME: (d / "CMU-1-Small-Region.svs").read_bytes(),
        SMALL_NAME: (d / "synthetic/small.svs").read_bytes(),
        TCGA_NAME: (d / "TCGA-CR-7395-01A-01-TS1.svs").read_bytes(),
        "TCGA-CR-7395-01A-01-TS1.svs": (d / "TCGA-CR-7395-01A-01-TS1.svs").read_bytes(),
        "TCGA-YY-0001-01Z-00-DX1.OTHER.svs": (d / "synthetic/small.svs").read_bytes(),
        "TCGA-ZZ-0003-01Z-00-DX1.LOCKED.svs": (d / "synthetic/small.svs").read_bytes(),
    }


@pytest.fixture()
def server(slides, shared_data):
    files = [
        _record("id-cmu", CMU_NAME, "TCGA-ZZ-0001", "TCGA-TEST", slides[CMU_NAME]),
        _record("id-small", SMALL_NAME, "TCGA-ZZ-0001", "TCGA-TEST", slides[SMALL_NAME]),
        _record("id-tcga", TCGA_NAME, "TCGA-ZZ-0002", "TCGA-TEST", slides[TCGA_NAME]),
        # Not diagnostic slides of TCGA-TEST: a frozen section, another project, a non-SVS file.
        _record(
            "id-frozen",
            "TCGA-CR-7395-01A-01-TS1.svs",
            "TCGA-CR-7395",
            "TCGA-TEST",
            slides["TCGA-CR-7395-01A-01-TS1.svs"],
            strategy="Tissue Slide",
        ),
        _record(
            "id-other",
            "TCGA-YY-0001-01Z-00-DX1.OTHER.svs",
            "TCGA-YY-0001",
            "TCGA-OTHER",
            slides["TCGA-YY-0001-01Z-00-DX1.OTHER.svs"],
        ),
        _record("id-bam", "x.bam", "TCGA-ZZ-0001", "TCGA-TEST", b"bam", fmt="BAM"),
        _record(
            "id-locked",
            "TCGA-ZZ-0003-01Z-00-DX1.LOCKED.svs",
            "TCGA-ZZ-0003",
            "TCGA-LOCKED",
            slides["TCGA-ZZ-0003-01Z-00-DX1.LOCKED.svs"],
            access="controlled",
        ),
    ]
    blobs = dict(slides)
    tcga = shared_data / "tcga/ucec"
    blobs["ucec.csv.zip"] = (tcga / "clinical_omics.csv.zip").read_bytes()
    for k in range(5):
        blobs[f"splits_{k}.csv"] = (tcga / f"splits/splits_{k}.csv").read_bytes()
    srv = FakeGDC(files, blobs, ["TCGA-TEST", "TCGA-OTHER", "TCGA-EMPTY", "TCGA-LOCKED"])
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def fast(srv: FakeGDC, **kw) -> Gdc:
    """Connection settings with tiny waits, so retries cost milliseconds."""
    return Gdc(**{"base_url": srv.url, "backoff_s": 0.01, "retries": 3, "page_size": 2, **kw})


# --- manifest ---


def test_manifest_filters_paginates_and_maps_cases(server, slides):
    manifest = gdc.query_manifest(fast(server), ManifestQuery("TCGA-TEST"))
    assert list(manifest.columns) == gdc.MANIFEST_COLUMNS
    assert list(manifest["file_name"]) == [CMU_NAME, SMALL_NAME, TCGA_NAME]  # no frozen, BAM or other project
    assert list(manifest["case_id"]) == ["TCGA-ZZ-0001", "TCGA-ZZ-0001", "TCGA-ZZ-0002"]
    assert manifest.set_index("file_name").loc[CMU_NAME, "md5sum"] == md5_of(slides[CMU_NAME])
    assert int(manifest.set_index("file_name").loc[TCGA_NAME, "file_size"]) == len(slides[TCGA_NAME])
    pages = [e for e in server.log if e[:2] == ("POST", "/files")]
    assert len(pages) == 2  # 3 hits at page_size 2


def test_manifest_cases_and_max_files(server):
    cfg = fast(server)
    only = gdc.query_manifest(cfg, ManifestQuery("TCGA-TEST", cases=["TCGA-ZZ-0002", "TCGA-ZZ-9999"]))
    assert list(only["file_name"]) == [TCGA_NAME]
    first = gdc.query_manifest(cfg, ManifestQuery("TCGA-TEST", max_files=1))
    assert list(first["file_name"]) == [CMU_NAME]  # the first by file name: reproducible


def test_unknown_project_and_project_without_slides_are_clear_errors(server):
    with pytest.raises(ValueError, match=r"GDC project 'TCGA-NOPE' does not exist at http://127\.0\.0\.1.*TCGA-BLCA"):
        gdc.query_manifest(fast(server), ManifestQuery("TCGA-NOPE"))
    with pytest.raises(ValueError, match="'TCGA-EMPTY' has no diagnostic SVS slides"):
        gdc.query_manifest(fast(server), ManifestQuery("TCGA-EMPTY"))


def test_wrong_base_url_is_a_clear_error(server):
    with pytest.raises(RuntimeError, match=r"GDC files query .*is not JSON.*is `gdc.base_url` the GDC API"):
        gdc.query_manifest(fast(server, base_url=f"{server.url}/portal"), ManifestQuery("TCGA-TEST"))


def test_api_503_is_retried_then_gives_up(server):
    server.fail_503["/files"] = 2
    manifest = gdc.query_manifest(fast(server, page_size=10), ManifestQuery("TCGA-TEST"))
    assert len(manifest) == 3
    server.fail_503["/files"] = 10
    with pytest.raises(RuntimeError, match="gave up after 3 retries"):
        gdc.query_manifest(fast(server), ManifestQuery("TCGA-TEST"))


def test_manifest_cli_writes_manifest_and_query(server, tmp_path):
    out = tmp_path / "gdc_manifest.tsv"
    params = fast(server).model_dump_json()
    result = subprocess.run(
        [
            str(BIN / "healnet"),
            "gdc-manifest",
            "--project",
            "TCGA-TEST",
            "--max-files",
            "2",
            "--out",
            str(out),
            "--params",
            params,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(out, sep="\t")) == 2
    assert gdc.read_manifest_query(out) == ManifestQuery("TCGA-TEST", None, 2)
    bad = subprocess.run(
        [
            str(BIN / "healnet"),
            "gdc-manifest",
            "--project",
            "TCGA-NOPE",
            "--out",
            str(tmp_path / "x.tsv"),
            "--params",
            params,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.tsv").exists()


# --- downloads ---


def test_download_normal(server, slides, tmp_path):
    dest = tmp_path / CMU_NAME
    gdc.download_slide(fast(server), "id-cmu", dest, md5_of(slides[CMU_NAME]), len(slides[CMU_NAME]))
    assert dest.read_bytes() == slides[CMU_NAME]
    assert not part_path(dest).exists()
    assert [e for e in server.log if e[0] == "GET"] == [("GET", "/data/id-cmu", None)]


def test_dropped_connection_resumes_with_range(server, slides, tmp_path):
    data, cut = slides[TCGA_NAME], 1_000_000
    server.drop_after["/data/id-tcga"] = cut
    dest = tmp_path / TCGA_NAME
    gdc.download_slide(fast(server), "id-tcga", dest, md5_of(data), len(data))
    assert md5_of(dest.read_bytes()) == md5_of(data)
    gets = [e for e in server.log if e[0] == "GET"]
    assert [e[:2] for e in gets] == [("GET", "/data/id-tcga")] * 2 and gets[0][2] is None
    resumed_at = int(gets[1][2].removeprefix("bytes=").removesuffix("-"))
    assert cut - NET_CHUNK < resumed_at <= cut  # only the block the break cut short is fetched again
    assert server.bytes_sent["/data/id-tcga"] == cut + len(data) - resumed_at


def test_killed_job_leaves_part_file_that_next_run_resumes(server, slides, tmp_path):
    data = slides[CMU_NAME]
    dest = tmp_path / CMU_NAME
    part_path(dest).write_bytes(data[:700_000])  # what an interrupted earlier run left
    gdc.download_slide(fast(server), "id-cmu", dest, md5_of(data), len(data))
    assert dest.read_bytes() == data
    assert [e[2] for e in server.log if e[0] == "GET"] == ["bytes=700000-"]


def test_transient_503s_are_retried(server, slides, tmp_path):
    server.fail_503["/data/id-small"] = 2
    dest = tmp_path / SMALL_NAME
    gdc.download_slide(fast(server), "id-small", dest, md5_of(slides[SMALL_NAME]), len(slides[SMALL_NAME]))
    assert dest.read_bytes() == slides[SMALL_NAME]
    assert len([e for e in server.log if e[0] == "GET"]) == 3


def test_persistent_503s_give_up_with_a_clear_error(server, slides, tmp_path):
    server.fail_503["/data/id-small"] = 100
    with pytest.raises(RuntimeError, match=r"failed 4 times in a row .*next run resumes"):
        gdc.download_slide(fast(server), "id-small", tmp_path / SMALL_NAME, md5_of(slides[SMALL_NAME]))
    assert not (tmp_path / SMALL_NAME).exists()


def test_stalled_response_times_out_and_is_retried(server, slides, tmp_path):
    server.stall_s["/data/id-small"] = 1.0
    dest = tmp_path / SMALL_NAME
    cfg = fast(server, read_timeout_s=0.3)
    gdc.download_slide(cfg, "id-small", dest, md5_of(slides[SMALL_NAME]), len(slides[SMALL_NAME]))
    assert dest.read_bytes() == slides[SMALL_NAME]
    assert len([e for e in server.log if e[0] == "GET"]) == 2


def test_wrong_md5_is_an_error_and_nothing_is_kept(server, slides, tmp_path):
    dest = tmp_path / CMU_NAME
    with pytest.raises(RuntimeError, match=r"md5 mismatch .* expected 0{32}, got " + md5_of(slides[CMU_NAME])):
        gdc.download_slide(fast(server), "id-cmu", dest, "0" * 32, len(slides[CMU_NAME]))
    assert list(tmp_path.iterdir()) == []  # neither the file nor a part file


def test_controlled_file_needs_token(server, slides, tmp_path):
    data = slides["TCGA-ZZ-0003-01Z-00-DX1.LOCKED.svs"]
    with pytest.raises(RuntimeError, match=r"access denied \(HTTP 403\).*gdc.token_file"):
        gdc.download_slide(fast(server), "id-locked", tmp_path / "locked.svs", md5_of(data))
    with pytest.raises(FileNotFoundError, match="gdc.token_file .*missing.txt does not exist"):
        gdc.download_slide(
            fast(server, token_file=str(tmp_path / "missing.txt")), "id-locked", tmp_path / "locked.svs", md5_of(data)
        )
    token = tmp_path / "token.txt"
    token.write_text(TOKEN + "\n")
    gdc.download_slide(fast(server, token_file=str(token)), "id-locked", tmp_path / "locked.svs", md5_of(data))
    assert (tmp_path / "locked.svs").read_bytes() == data


def test_download_cli_fetches_a_whole_manifest_and_skips_present_files(server, slides, tmp_path):
    from healnet.cli import main

    manifest = tmp_path / "gdc_manifest.tsv"
    gdc.write_manifest(
        gdc.query_manifest(fast(server), ManifestQuery("TCGA-TEST")), ManifestQuery("TCGA-TEST"), manifest
    )
    outdir = tmp_path / "slides"
    outdir.mkdir()
    (outdir / TCGA_NAME).write_bytes(slides[TCGA_NAME])  # already there: not fetched again
    params = fast(server).model_dump_json()
    assert main(["gdc-download", "--manifest", str(manifest), "--outdir", str(outdir), "--params", params]) == 0
    expected = {n: slides[n] for n in (CMU_NAME, SMALL_NAME, TCGA_NAME)}
    assert {p.name: p.read_bytes() for p in outdir.iterdir()} == expected
    assert sorted(e[1] for e in server.log if e[0] == "GET") == ["/data/id-cmu", "/data/id-small"]
    assert main(["gdc-download", "--file-id", "id-cmu", "--params", params]) == 1  # no --md5 / --out


def test_sheet_from_manifest(server, tmp_path):
    manifest = gdc.query_manifest(fast(server), ManifestQuery("TCGA-TEST"))
    with pytest.raises(FileNotFoundError, match="3 slide\\(s\\) of the manifest are not downloaded"):
        gdc.manifest_to_sheet(manifest, tmp_path)
    sheet = gdc.manifest_to_sheet(manifest, tmp_path, check_files=False)
    assert list(sheet["slide_id"]) == [
        "TCGA-ZZ-0001-01Z-00-DX1.CMU1",
        "TCGA-ZZ-0001-01Z-00-DX2.SMALL",
        "TCGA-ZZ-0002-01Z-00-DX1.CR7395",
    ]
    assert sheet["path"].iloc[2] == str(tmp_path / TCGA_NAME)


# --- tables ---


def test_table_download_verifies_sha256(server, shared_data, tmp_path):
    data = (shared_data / "tcga/ucec/clinical_omics.csv.zip").read_bytes()
    policy = RetryPolicy(retries=2, backoff_s=0.01)
    out = fetch_table(f"{server.url}/tables/ucec.csv.zip", tmp_path / "t.csv.zip", sha256_of(data), policy)
    assert out.read_bytes() == data
    assert len(pd.read_csv(out, compression="zip")) == 538  # UCEC: one row per slide
    with pytest.raises(RuntimeError, match="sha256 mismatch .*update the pinned checksum"):
        fetch_table(f"{server.url}/tables/ucec.csv.zip", tmp_path / "bad.csv.zip", "f" * 64, policy)
    assert not (tmp_path / "bad.csv.zip").exists() and not part_path(tmp_path / "bad.csv.zip").exists()


def test_table_local_path_is_copied_after_verification(shared_data, tmp_path):
    src = shared_data / "tcga/blca/clinical_omics.csv.zip"
    out = fetch_table(str(src), tmp_path / "blca.csv.zip", PORPOISE["TCGA-BLCA"].clinical_omics_sha256)
    assert out.read_bytes() == src.read_bytes()
    with pytest.raises(RuntimeError, match="does not match the pinned"):
        fetch_table(str(src), tmp_path / "x.csv.zip", PORPOISE["TCGA-UCEC"].clinical_omics_sha256)


def test_porpoise_pins_match_the_shared_copies(shared_data):
    """The built-in sha256 values are those of the byte-identical copies in ../shared/data/tcga."""
    for project, pinned in PORPOISE.items():
        c = shared_data / "tcga" / project.removeprefix("TCGA-").lower()
        assert sha256_of((c / "clinical_omics.csv.zip").read_bytes()) == pinned.clinical_omics_sha256
        assert [sha256_of((c / f"splits/splits_{k}.csv").read_bytes()) for k in range(5)] == list(pinned.splits_sha256)
    table, splits = porpoise_urls("TCGA-KIRP")
    assert table.endswith(
        "/mahmoodlab/PORPOISE/3390dc40e15995ba852d7a561faf0e996cf20501/datasets_csv_mutsig/tcga_kirp_all_clean.csv.zip"
    )
    assert splits.endswith("/splits/5foldcv/tcga_kirp/splits_{k}.csv")


def test_config_fills_gdc_cohort_paths_and_pinned_defaults():
    cfg = parse_config({"cohorts": {"blca": {"gdc_project": "TCGA-BLCA"}}})
    c = cfg.cohorts["blca"]
    assert (c.slides, c.clinical_omics, c.splits) == (
        "data/blca/slides.tsv",
        "data/blca/clinical_omics.csv.zip",
        "data/blca/splits",
    )
    assert c.clinical_omics_sha256 == PORPOISE["TCGA-BLCA"].clinical_omics_sha256 and len(c.splits_sha256) == 5
    local = parse_config({"cohorts": {"b": {"gdc_project": "TCGA-BLCA", "clinical_omics": "/t.zip"}}}).cohorts["b"]
    assert local.clinical_omics == "/t.zip" and local.clinical_omics_url is None  # a local path: no download
    with pytest.raises(ConfigError, match="no clinical \\+ omics table for TCGA-LUAD"):
        parse_config({"cohorts": {"luad": {"gdc_project": "TCGA-LUAD"}}})
    with pytest.raises(ConfigError, match="sample sheet is built at data/x/slides.tsv"):
        parse_config({"cohorts": {"x": {"gdc_project": "TCGA-BLCA", "slides": "mine.tsv"}}})
    with pytest.raises(ConfigError, match="clinical_omics_url needs clinical_omics_sha256"):
        parse_config({"cohorts": {"x": {"clinical_omics_url": "https://example.org/t.csv"}}})


# --- the workflow, end to end ---


def _snakemake(workdir: Path, repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [
            str(BIN / "snakemake"),
            *args,
            "-s",
            str(repo / "workflow/Snakefile"),
            "--directory",
            str(workdir),
            "--cores",
            "2",
            "--resources",
            "gdc_connections=2",
            "--configfile",
            str(workdir / "gdc.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_snakemake_builds_cohort_from_gdc(server, slides, repo, shared_data, tmp_path):
    ucec = shared_data / "tcga/ucec"
    shutil.copy(repo / "config.yaml", tmp_path / "config.yaml")
    extra = {
        "gdc": {"base_url": server.url, "retries": 3, "backoff_s": 0.01, "page_size": 2},
        "cohorts": {
            "gdctest": {
                "gdc_project": "TCGA-TEST",
                "clinical_omics_url": f"{server.url}/tables/ucec.csv.zip",
                "clinical_omics_sha256": sha256_of((ucec / "clinical_omics.csv.zip").read_bytes()),
                "splits_url": server.url + "/tables/splits_{k}.csv",
                "splits_sha256": [sha256_of((ucec / f"splits/splits_{k}.csv").read_bytes()) for k in range(5)],
            }
        },
    }
    (tmp_path / "gdc.yaml").write_text(yaml.safe_dump(extra))

    # The manifest is part of the DAG: a dry run plans it before anything it decides.
    first = _snakemake(tmp_path, repo, "data/gdctest/slides.tsv", "-n")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "checkpoint gdc_manifest:" in first.stdout and "gdc_download" not in first.stdout

    built = _snakemake(tmp_path, repo, "data/gdctest/gdc_manifest.tsv")
    assert built.returncode == 0, built.stdout + built.stderr
    manifest = pd.read_csv(tmp_path / "data/gdctest/gdc_manifest.tsv", sep="\t")
    assert list(manifest["file_name"]) == [CMU_NAME, SMALL_NAME, TCGA_NAME]

    # Downloads (one job each) meet a 503 and a dropped connection; the sheet, table and splits follow.
    server.fail_503["/data/id-small"] = 1
    server.drop_after["/data/id-tcga"] = 500_000
    targets = [
        "data/gdctest/slides.tsv",
        "data/gdctest/clinical_omics.csv.zip",
        "data/gdctest/splits/splits_0.csv",
        "data/gdctest/splits/splits_3.csv",
    ]
    run = _snakemake(tmp_path, repo, *targets)
    assert run.returncode == 0, run.stdout + run.stderr
    sheet = pd.read_csv(tmp_path / "data/gdctest/slides.tsv", sep="\t")
    assert list(sheet.columns) == ["case_id", "slide_id", "path"]
    assert list(sheet["case_id"]) == ["TCGA-ZZ-0001", "TCGA-ZZ-0001", "TCGA-ZZ-0002"]
    for name, path in zip([CMU_NAME, SMALL_NAME, TCGA_NAME], sheet["path"]):
        assert path == f"data/gdctest/slides/{name}"
        assert (tmp_path / path).read_bytes() == slides[name]
    assert [e[2] for e in server.log if e[1] == "/data/id-tcga"][0] is None
    resumed = [e[2] for e in server.log if e[1] == "/data/id-tcga"][1]
    assert 500_000 - NET_CHUNK < int(resumed.removeprefix("bytes=").removesuffix("-")) <= 500_000
    assert (tmp_path / "data/gdctest/splits/splits_3.csv").read_bytes() == (ucec / "splits/splits_3.csv").read_bytes()
    assert not list((tmp_path / "data/gdctest/slides").glob(".*.part"))

    # Connection settings are not provenance: a new retry count or token file re-downloads nothing.
    extra["gdc"]["retries"] = 7
    (tmp_path / "gdc.yaml").write_text(yaml.safe_dump(extra))
    again = _snakemake(tmp_path, repo, "-n", *targets)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout

    # The manifest is pinned: reused as is, rebuilt (as a tracked param) when its query changes.
    extra["cohorts"]["gdctest"]["gdc_max_files"] = 2
    (tmp_path / "gdc.yaml").write_text(yaml.safe_dump(extra))
    changed = _snakemake(tmp_path, repo, "-n", "data/gdctest/slides.tsv")
    assert changed.returncode == 0 and "checkpoint gdc_manifest:" in changed.stdout, changed.stdout + changed.stderr
    del extra["cohorts"]["gdctest"]["gdc_max_files"]
    (tmp_path / "gdc.yaml").write_text(yaml.safe_dump(extra))

    # The downloaded slide reads like any other, and goes through the WSI stage like any other.
    from healnet.config import SlideReading
    from healnet.wsi.slide import Slide

    with Slide.open(tmp_path / sheet["path"][0], SlideReading()) as s:
        assert s.dimensions == (2220, 2967)
        assert abs(s.mpp.mean - 0.499) < 1e-3
        assert s.read((0, 0), 0, (64, 32)).shape == (32, 64, 3)
    cmu_id = sheet["slide_id"][0]
    wsi = _snakemake(tmp_path, repo, f"results/gdctest/patches/{cmu_id}.zarr")
    assert wsi.returncode == 0, wsi.stdout + wsi.stderr
    import zarr

    patches = zarr.open_group(str(tmp_path / f"results/gdctest/patches/{cmu_id}.zarr"), mode="r")
    assert patches["coords"].shape[0] > 10 and patches["coords"].shape[1] == 2
