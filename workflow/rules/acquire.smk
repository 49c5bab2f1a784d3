# Where cohorts come from: the synthetic demo generator and (below) the GDC download.


checkpoint demo_cohort:
    output:
        sheet="data/{cohort}/slides.tsv",
        table="data/{cohort}/clinical_omics.csv",
        truth="data/{cohort}/truth.tsv",
    log:
        "logs/{cohort}/demo_cohort.log",
    conda:
        "../../envs/healnet.yaml"
    params:
        demo=section_json("demo"),
    shell:
        "healnet demo-cohort --outdir data/{wildcards.cohort} --params {params.demo:q} --log {log}"
