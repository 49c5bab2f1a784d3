# Omics matrix, survival labels and cross-validation folds of a cohort (healnet/omics, healnet/survival).


rule omics:
    input:
        table=clinical_omics_input,
    output:
        "results/{cohort}/omics.tsv.gz",
    log:
        "logs/{cohort}/omics.log",
    benchmark:
        "benchmarks/{cohort}/omics.tsv"
    conda:
        "../../envs/healnet.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        omics=section_json("omics"),
    shell:
        "healnet omics --table {input.table} --output {output} --params {params.omics:q} --log {log}"


rule labels:
    input:
        table=clinical_omics_input,
    output:
        "results/{cohort}/labels.tsv",
    log:
        "logs/{cohort}/labels.log",
    conda:
        "../../envs/healnet.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        labels=section_json("labels"),
    shell:
        "healnet labels --table {input.table} --output {output} --params {params.labels:q} --log {log}"


# One job per fold; each computes and checks all folds (cheap) and writes its own.
rule splits:
    input:
        labels="results/{cohort}/labels.tsv",
        split_files=provided_split_files,
    output:
        "results/{cohort}/splits/fold{fold}.tsv",
    log:
        "logs/{cohort}/splits_fold{fold}.log",
    conda:
        "../../envs/healnet.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        splits=section_json("splits"),
    shell:
        "healnet splits --labels {input.labels} --split-files {input.split_files} --fold {wildcards.fold} "
        "--output {output} --params {params.splits:q} --log {log}"
