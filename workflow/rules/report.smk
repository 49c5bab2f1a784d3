# What `snakemake --report` shows as tables: the Snakemake report displays HTML inline but a TSV only
# as a download link, so the people-facing tables are rendered once more as HTML (healnet/report.py).
# Figures (QC thumbnails, Kaplan-Meier curves, attention heatmaps) are report() outputs of their rules.


rule report_tables:
    input:
        cindex="results/{cohort}/cindex.tsv",
        missing="results/{cohort}/cindex_missing.tsv",
        logrank="results/{cohort}/km_logrank.tsv",
        versions="results/{cohort}/versions.tsv",
        # not read: makes results/{cohort}/report/cindex.html the one target of the cohort's report
        km="results/{cohort}/km.png",
    output:
        cindex=report(
            "results/{cohort}/report/cindex.html",
            caption="../report/cindex.rst",
            category="Evaluation",
            subcategory="{cohort}",
            labels={"cohort": "{cohort}", "result": "c-index per model and fold"},
        ),
        missing=report(
            "results/{cohort}/report/cindex_missing.html",
            caption="../report/cindex_missing.rst",
            category="Evaluation",
            subcategory="{cohort}",
            labels={"cohort": "{cohort}", "result": "c-index with missing modalities"},
        ),
        logrank=report(
            "results/{cohort}/report/km_logrank.html",
            caption="../report/km_logrank.rst",
            category="Evaluation",
            subcategory="{cohort}",
            labels={"cohort": "{cohort}", "result": "log-rank test of risk groups"},
        ),
        versions=report(
            "results/{cohort}/report/versions.html",
            caption="../report/versions.rst",
            category="Software",
            subcategory="{cohort}",
            labels={"cohort": "{cohort}", "result": "versions of the evaluation"},
        ),
    log:
        "logs/{cohort}/report_tables.log",
    conda:
        "../../envs/healnet.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "healnet report-table --tsv {input.cindex} {input.missing} {input.logrank} {input.versions} "
        "--html {output.cindex} {output.missing} {output.logrank} {output.versions} "
        "--title {wildcards.cohort} --log {log}"


rule report_slides_table:
    input:
        "results/{cohort}/qc/slides.tsv",
    output:
        report(
            "results/{cohort}/report/slides_qc.html",
            caption="../report/wsi_slides.rst",
            category="Slides",
            subcategory="{cohort}",
            labels={"cohort": "{cohort}", "slide": "all slides: QC table"},
        ),
    log:
        "logs/{cohort}/report_slides_table.log",
    conda:
        "../../envs/healnet.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "healnet report-table --tsv {input} --html {output} --title {wildcards.cohort} --log {log}"
