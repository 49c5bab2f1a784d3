"""The NCI Genomic Data Commons: which diagnostic slides a project has, and fetching them.

Used parts of the GDC API (https://docs.gdc.cancer.gov/API/Users_Guide/):
- `POST {base}/files` with JSON `filters`, `fields`, `size`, `from`, `sort`: paginated file search;
- `POST {base}/projects`: to tell an unknown project from one without matching slides;
- `GET {base}/data/{file_id}`: the file itself; honours `Range`; `X-Auth-Token` for controlled data.

The manifest (`file_id`, `file_name`, `md5sum`, `file_size`, `case_id`) pins what a cohort is, so a
later run downloads exactly the same files; a JSON sidecar records the query that built it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import requests

from healnet.acquire.http import RetryPolicy, download, request_json
from healnet.config import Cohort, Gdc
from healnet.io import cached_while_unchanged, write_text, write_tsv

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["file_id", "file_name", "md5sum", "file_size", "case_id"]
FIELDS = ["file_id", "file_name", "md5sum", "file_size", "cases.submitter_id"]
# Diagnostic (formalin-fixed, paraffin-embedded) H&E slides, as TCGA's DX*.svs files.
SLIDE_FILTERS = {
    "data_type": ["Slide Image"],
    "experimental_strategy": ["Diagnostic Slide"],
    "data_format": ["SVS"],
}


@dataclass(frozen=True)
class ManifestQuery:
    """What a manifest holds: recorded next to it, compared with the config before use."""

    project: str
    cases: list[str] | None = None
    max_files: int | None = None

    def describe(self) -> str:
        cases = f"{len(self.cases)} listed case(s)" if self.cases else "all cases"
        limit = f"at most {self.max_files} files" if self.max_files else "no file limit"
        return f"{self.project}, {cases}, {limit}"

    def to_json(self) -> str:
        return json.dumps({"project": self.project, "cases": self.cases, "max_files": self.max_files}, indent=1)

    @classmethod
    def of_cohort(cls, cohort: Cohort) -> ManifestQuery:
        """The query a cohort's config asks for (gdc_project, gdc_cases, gdc_max_files)."""
        return cls(
            cohort.gdc_project or "", sorted(cohort.gdc_cases) if cohort.gdc_cases else None, cohort.gdc_max_files
        )

    def cli_args(self) -> str:
        """`healnet gdc-manifest` arguments besides --project: which slides the manifest lists."""
        args = f"--max-files {self.max_files}" if self.max_files else ""
        if self.cases:
            args += " --cases " + " ".join(self.cases)
        return args.strip()


def check_manifest_query(path: str | Path, name: str, wanted: ManifestQuery) -> None:
    """A manifest is reused only for the query it was built for; else the error says how to rebuild it."""
    built = read_manifest_query(path)
    if built != wanted:  # or built before this workflow tracked its query (no metadata to rerun it)
        was = built.describe() if built else "an unknown query (no .json next to it)"
        raise ValueError(
            f"cohort {name!r}: the GDC manifest {path} was built for {was}, but the config "
            f"(gdc_project, gdc_cases, gdc_max_files) asks for {wanted.describe()}; "
            f"rebuild it: `snakemake --cores 1 {path} --forcerun gdc_manifest`"
        )


def policy_of(cfg: Gdc) -> RetryPolicy:
    return RetryPolicy(cfg.retries, cfg.backoff_s, cfg.connect_timeout_s, cfg.read_timeout_s)


def read_token(cfg: Gdc) -> str | None:
    """The GDC token from `gdc.token_file`, or None (open-access data needs none)."""
    if not cfg.token_file:
        return None
    path = Path(cfg.token_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"gdc.token_file {path} does not exist; download a token from the GDC portal (user menu -> "
            "Download Token) and point `gdc.token_file` at it, or remove the key for open-access data"
        )
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"gdc.token_file {path} is empty; download a fresh token from the GDC portal")
    return token


def session_for(cfg: Gdc) -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = "healnet-pipeline"
    token = read_token(cfg)
    if token:
        session.headers["X-Auth-Token"] = token
    return session


def in_filter(field: str, values: list[str]) -> dict:
    return {"op": "in", "content": {"field": field, "value": list(values)}}


def slide_filters(project: str, cases: list[str] | None = None) -> dict:
    """GDC filter: the project's diagnostic SVS slides, optionally of some patients only."""
    content = [in_filter("cases.project.project_id", [project])]
    content += [in_filter(field, values) for field, values in SLIDE_FILTERS.items()]
    if cases:
        content.append(in_filter("cases.submitter_id", cases))
    return {"op": "and", "content": content}


def _base(cfg: Gdc) -> str:
    return cfg.base_url.rstrip("/")


def project_exists(cfg: Gdc, project: str, session: requests.Session | None = None) -> bool:
    body = {"filters": in_filter("project_id", [project]), "fields": "project_id", "size": 1, "format": "JSON"}
    reply = request_json(
        session or session_for(cfg),
        "POST",
        f"{_base(cfg)}/projects",
        policy_of(cfg),
        f"GDC project lookup {project}",
        json=body,
    )
    return int(reply["data"]["pagination"]["total"]) > 0


def _hit_row(hit: dict[str, Any]) -> dict[str, Any] | None:
    cases = {c.get("submitter_id") for c in hit.get("cases") or []} - {None}
    if len(cases) != 1:
        log.warning(
            "GDC file %s (%s) belongs to %d cases %s; skipped (a slide has one patient)",
            hit.get("file_id"),
            hit.get("file_name"),
            len(cases),
            sorted(cases),
        )
        return None
    return {
        "file_id": hit["file_id"],
        "file_name": hit["file_name"],
        "md5sum": hit["md5sum"],
        "file_size": int(hit["file_size"]),
        "case_id": cases.pop(),
    }


def query_manifest(cfg: Gdc, query: ManifestQuery, session: requests.Session | None = None) -> pd.DataFrame:
    """All matching slides (pages of `gdc.page_size`), sorted by file name, cut at `max_files`."""
    session = session or session_for(cfg)
    policy = policy_of(cfg)
    rows: list[dict[str, Any]] = []
    start, total = 0, None
    while total is None or start < total:
        size = cfg.page_size if query.max_files is None else min(cfg.page_size, query.max_files - len(rows))
        body = {
            "filters": slide_filters(query.project, query.cases),
            "fields": ",".join(FIELDS),
            "format": "JSON",
            "size": size,
            "from": start,
            "sort": "file_name:asc",
        }
        reply = request_json(
            session, "POST", f"{_base(cfg)}/files", policy, f"GDC files query {query.project}", json=body
        )
        try:
            data = reply["data"]
            hits, total = data["hits"], int(data["pagination"]["total"])
        except (KeyError, TypeError):
            raise RuntimeError(
                f"GDC files query: unexpected answer from {_base(cfg)}/files (no data.hits/pagination); "
                "is `gdc.base_url` the GDC API (https://api.gdc.cancer.gov)?"
            ) from None
        rows += [row for row in map(_hit_row, hits) if row is not None]
        log.info("GDC %s: %d of %d slide files listed", query.project, min(start + len(hits), total), total)
        start += len(hits)
        if not hits or (query.max_files is not None and len(rows) >= query.max_files):
            break
    if not rows:
        if not project_exists(cfg, query.project, session):
            raise ValueError(
                f"GDC project {query.project!r} does not exist at {cfg.base_url}. Project ids look like "
                f"TCGA-BLCA (all of them: {_base(cfg)}/projects?fields=project_id&size=1000); "
                "fix `gdc_project` of the cohort in the config"
            )
        which = f" for the {len(query.cases)} case(s) in gdc_cases" if query.cases else ""
        raise ValueError(
            f"GDC project {query.project!r} has no diagnostic SVS slides{which}; check the project "
            "(TCGA projects have them) and the cohort's `gdc_cases`"
        )
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    if query.max_files is not None:
        manifest = manifest.iloc[: query.max_files]
    if query.cases:
        absent = sorted(set(query.cases) - set(manifest["case_id"]))
        if absent:
            log.warning(
                "GDC %s: no diagnostic slide for %d requested case(s): %s",
                query.project,
                len(absent),
                ", ".join(absent[:20]) + (" ..." if len(absent) > 20 else ""),
            )
    return manifest.sort_values(["case_id", "file_name"], ignore_index=True)


def query_path(manifest_path: str | Path) -> Path:
    """The JSON sidecar recording the query a manifest was built from."""
    return Path(manifest_path).with_suffix(".json")


def write_manifest(manifest: pd.DataFrame, query: ManifestQuery, path: str | Path) -> None:
    write_tsv(manifest[MANIFEST_COLUMNS], path)
    write_text(query.to_json() + "\n", query_path(path))


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"GDC manifest {path} does not exist; build it with `healnet gdc-manifest` "
            "or `snakemake data/<cohort>/gdc_manifest.tsv`"
        )
    manifest = pd.read_csv(path, sep="\t", dtype={"file_id": str, "file_name": str, "md5sum": str, "case_id": str})
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"GDC manifest {path}: missing column(s) {missing}; rebuild it with `healnet gdc-manifest`")
    dup = manifest["file_name"][manifest["file_name"].duplicated()]
    if len(dup):
        raise ValueError(f"GDC manifest {path}: file name(s) listed twice: {sorted(set(dup))}; rebuild it")
    return manifest


@cached_while_unchanged
def indexed_manifest(path: str | Path) -> dict[str, dict]:
    """{file_name: row} of a manifest, read once per process while the file is unchanged."""
    return {r["file_name"]: r for r in read_manifest(path).to_dict("records")}


def read_manifest_query(path: str | Path) -> ManifestQuery | None:
    sidecar = query_path(path)
    if not sidecar.is_file():
        return None
    data = json.loads(sidecar.read_text())
    return ManifestQuery(data["project"], data.get("cases"), data.get("max_files"))


def slide_id_of(file_name: str) -> str:
    """Sample-sheet slide id of a GDC file: its name without the extension (file names are unique)."""
    return file_name.rsplit(".", 1)[0] if "." in file_name else file_name


def manifest_to_sheet(manifest: pd.DataFrame, slides_dir: str | Path, check_files: bool = True) -> pd.DataFrame:
    """The cohort's sample sheet: one row per downloaded slide, paths inside `slides_dir`."""
    slides_dir = Path(slides_dir)
    sheet = pd.DataFrame(
        {
            "case_id": manifest["case_id"],
            "slide_id": manifest["file_name"].map(slide_id_of),
            "path": [str(slides_dir / name) for name in manifest["file_name"]],
        }
    )
    if check_files:
        absent = [p for p in sheet["path"] if not Path(p).is_file()]
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} slide(s) of the manifest are not downloaded, e.g. {absent[0]}; run "
                "`snakemake data/<cohort>/slides.tsv` (it downloads them first)"
            )
    return sheet


def download_slide(
    cfg: Gdc,
    file_id: str,
    dest: str | Path,
    md5sum: str,
    file_size: int | None = None,
    session: requests.Session | None = None,
) -> Path:
    """One GDC file to `dest`, resumable and md5-verified (see healnet.acquire.http.download)."""
    return download(
        f"{_base(cfg)}/data/{file_id}",
        dest,
        checksum=("md5", md5sum),
        size=file_size,
        policy=policy_of(cfg),
        what=Path(dest).name,
        session=session or session_for(cfg),
    )
