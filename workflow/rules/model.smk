# Training per cohort, model and fold; evaluation per cohort (healnet/training, healnet/evaluate).
# A run's folder and files: healnet/runs.py (`runs`, imported in common.smk).
from healnet.runs import run_file


wildcard_constraints:
    model=wildcard_pattern("model"),


rule train:
    input:
        unpack(train_data_inputs),
        labels="results/{cohort}/labels.tsv",
        fold="results/{cohort}/splits/fold{fold}.tsv",
    output:
        checkpoint=run_file(runs.CHECKPOINT),
        run_json=run_file(runs.RUN_JSON),
        predictions=run_file(runs.PREDICTIONS),
        train_log=run_file(runs.TRAIN_LOG),
    log:
        "logs/{cohort}/train/{model}_fold{fold}.log",
    benchmark:
        "benchmarks/{cohort}/train/{model}_fold{fold}.tsv"
    conda:
        "../../envs/healnet.yaml"
    # One thread: these small models run several times faster single-threaded on a shared CPU
    # (intra-op threads wait on each other); the heavy lifting belongs on the GPU.
    threads: 1
    resources:
        gpu=GPU_JOB,
        mem_mb=8000,
    params:
        data=data_args,
        spec=model_spec_json,
        training=model_training_json,
        omics=section_json("omics"),
        labels=section_json("labels"),
        outdir=subpath(output.checkpoint, parent=True),
    shell:
        "healnet train --labels {input.labels} --fold-file {input.fold} --fold {wildcards.fold} "
        "{params.data} --model {wildcards.model} --spec {params.spec:q} "
        "--training {params.training:q} --omics-params {params.omics:q} "
        "--labels-params {params.labels:q} --outdir {params.outdir} --threads {threads} --log {log}"


rule evaluate:
    input:
        unpack(evaluate_inputs),
        labels="results/{cohort}/labels.tsv",
        folds=cohort_fold_files,
    output:
        cindex="results/{cohort}/cindex.tsv",  # in the report as HTML: rules/report.smk
        missing="results/{cohort}/cindex_missing.tsv",
        versions="results/{cohort}/versions.tsv",  # the stack it ran with (healnet/stack.py)
        inspect=report(
            directory("results/{cohort}/inspect"),
            patterns=["{name}.png"],
            caption="../report/attention.rst",
            category="Attention",
            subcategory="{cohort}",
            labels={"cohort": "{cohort}", "heatmap": "{name}"},
        ),
    log:
        "logs/{cohort}/evaluate.log",
    benchmark:
        "benchmarks/{cohort}/evaluate.tsv"
    conda:
        "../../envs/healnet.yaml"
    threads: 1
    resources:
        gpu=GPU_JOB,
        mem_mb=8000,
    params:
        data=data_args,
        models=cohort_model_list,
        models_dir=cohort_models_dir,
        evaluation=section_json("evaluation"),
        training=cohort_training_json,
    shell:
        "healnet evaluate --models {params.models} --models-dir {params.models_dir} "
        "--fold-files {input.folds} --labels {input.labels} {params.data} "
        "--cindex {output.cindex} --missing {output.missing} --inspect {output.inspect} "
        "--versions {output.versions} "
        "--params {params.evaluation:q} --training {params.training:q} "
        "--threads {threads} --log {log}"


# Kaplan-Meier curves of predicted low/high-risk groups per model (healnet/report.py).
rule km_plot:
    input:
        predictions=cohort_predictions,
    output:
        plot=report(
            "results/{cohort}/km.png",
            caption="../report/km.rst",
            category="Evaluation",
            subcategory="{cohort}",
            labels={
                "cohort": "{cohort}",
                "result": "Kaplan-Meier curves of risk groups",
            },
        ),
        stats="results/{cohort}/km_logrank.tsv",
    log:
        "logs/{cohort}/km_plot.log",
    conda:
        "../../envs/healnet.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "healnet km-plot --predictions {input.predictions} --plot {output.plot} "
        "--stats {output.stats} --title {wildcards.cohort} --log {log}"
