# Where cohorts come from: the synthetic demo generator and (below) the GDC download.
from healnet.acquire.sources import reference_path


checkpoint demo_cohort:
    output:
        sheet="data/{cohort}/slides.tsv",
        table="data/{cohort}/clinical_omics.csv",
        truth="data/{cohort}/truth.tsv",
    log:
        "logs/{cohort}/demo_cohort.log",
    wildcard_constraints:
        cohort=wildcard_pattern("synthetic_cohort"),
    conda:
        "../../envs/healnet.yaml"
    params:
        demo=section_json("demo"),
    shell:
        "healnet demo-cohort --outdir data/{wildcards.cohort} --params {params.demo:q} --log {log}"


# --- GDC: manifest, one download job per slide, then the sample sheet ---
# The manifest is built when missing, then kept: the cohort stays the same set of files until its
# query (project, cases, max files: tracked params) changes or `--forcerun gdc_manifest` asks.
# It is a checkpoint: the download jobs are known once it exists (gdc_manifest in common.smk).
# Downloads run where Snakemake runs, not as cluster jobs: compute nodes often have no internet.


localrules:
    gdc_manifest,
    gdc_download,
    gdc_sheet,
    fetch_clinical_omics,
    fetch_split,


checkpoint gdc_manifest:
    output:
        manifest="data/{cohort}/gdc_manifest.tsv",
        query="data/{cohort}/gdc_manifest.json",
    log:
        "logs/{cohort}/gdc_manifest.log",
    wildcard_constraints:
        cohort=wildcard_pattern("gdc_cohort"),
    conda:
        "../../envs/healnet.yaml"
    threads: 1
    resources:
        gdc_connections=1,
    params:
        project=gdc_project,
        query=gdc_query_args,
        connection=gdc_connection,
    shell:
        "healnet gdc-manifest --project {params.project} {params.query} --out {output.manifest} "
        "--params {params.connection:q} --log {log}"


rule gdc_download:
    output:
        "data/{cohort}/slides/{file_name}",
    log:
        "logs/{cohort}/gdc_download/{file_name}.log",
    wildcard_constraints:
        cohort=wildcard_pattern("gdc_cohort"),
        file_name=r"[^/]+",
    conda:
        "../../envs/healnet.yaml"
    threads: 1
    resources:
        gdc_connections=1,
    params:
        file_id=gdc_file_id,
        md5=gdc_md5,
        size=gdc_size,
        connection=gdc_connection,
    shell:
        "healnet gdc-download --file-id {params.file_id} --md5 {params.md5} --size {params.size} "
        "--out {output} --params {params.connection:q} --log {log}"


# The sheet lists downloaded files only, so it is a checkpoint: the slides' jobs appear after it.
checkpoint gdc_sheet:
    input:
        manifest=gdc_manifest_input,
        slides=gdc_slide_files,
    output:
        sheet="data/{cohort}/slides.tsv",
    log:
        "logs/{cohort}/gdc_sheet.log",
    wildcard_constraints:
        cohort=wildcard_pattern("gdc_cohort"),
    conda:
        "../../envs/healnet.yaml"
    shell:
        "healnet gdc-sheet --manifest {input.manifest} --slides-dir data/{wildcards.cohort}/slides "
        "--out {output.sheet} --log {log}"


# One sha256-checked download (or copy of a local file) per file: tables, splits, reference files.
FETCH_TABLE = (
    "healnet fetch-table --url {params.url:q} --sha256 {params.sha256} --out {output} "
    "--params {params.connection:q} --log {log}"
)


rule fetch_clinical_omics:
    output:
        "data/{cohort}/clinical_omics.csv.zip",
    log:
        "logs/{cohort}/fetch_clinical_omics.log",
    wildcard_constraints:
        cohort=wildcard_pattern("table_cohort"),
    conda:
        "../../envs/healnet.yaml"
    resources:
        gdc_connections=1,
    params:
        url=table_url,
        sha256=table_sha256,
        connection=gdc_connection,
    shell:
        FETCH_TABLE


rule fetch_split:
    output:
        "data/{cohort}/splits/splits_{fold}.csv",
    log:
        "logs/{cohort}/fetch_split_{fold}.log",
    wildcard_constraints:
        cohort=wildcard_pattern("splits_cohort"),
    conda:
        "../../envs/healnet.yaml"
    resources:
        gdc_connections=1,
    params:
        url=split_url,
        sha256=split_sha256,
        connection=gdc_connection,
    shell:
        FETCH_TABLE


rule fetch_reference:
    output:
        reference_path("{reference}"),
    log:
        "logs/fetch_reference/{reference}.log",
    wildcard_constraints:
        reference=wildcard_pattern("reference"),
    conda:
        "../../envs/healnet.yaml"
    resources:
        gdc_connections=1,
    params:
        url=reference_url,
        sha256=reference_sha256,
        connection=gdc_connection,
    shell:
        FETCH_TABLE
