# The paper's tables and figures from one target: `snakemake --cores 8 paper` (healnet/paper).
# Every (cohort, model, fold) is trained by the `train` rule of model.smk; paper cohorts train the
# union of `paper.models`, the XOR pair `paper.unimodal` and `paper.inspect_model`.


localrules:
    paper,


rule paper:
    input:
        "results/paper/table1.tsv",
        "results/paper/table1.md",
        "results/paper/table2.tsv",
        "results/paper/uplift.png",
        "results/paper/uplift.tsv",
        paper_inspection_dirs(),


rule paper_cohort:
    input:
        unpack(paper_cohort_inputs),
        labels="results/{cohort}/labels.tsv",
        folds=cohort_fold_files,
    output:
        cindex="results/paper/{cohort}/cindex.tsv",
        missing="results/paper/{cohort}/cindex_missing.tsv",
        xor="results/paper/{cohort}/xor.tsv",
        xor_patients="results/paper/{cohort}/xor_patients.tsv",
        inspection=report(
            directory("results/paper/inspection/{cohort}"),
            patterns=["{name}.png"],
            caption="../report/paper_inspection.rst",
            category="Paper",
            subcategory="Inspection: {cohort}",
        ),
    log:
        "logs/{cohort}/paper_cohort.log",
    benchmark:
        "benchmarks/{cohort}/paper_cohort.tsv"
    wildcard_constraints:
        cohort=wildcard_pattern("paper_cohort"),
    conda:
        "../../envs/healnet.yaml"
    threads: 2
    resources:
        gpu=GPU_JOB,
        mem_mb=8000,
    params:
        data=data_args,
        models=paper_model_list,
        paper=section_json("paper"),
        evaluation=section_json("evaluation"),
        patching=section_json("patching"),
        training=cohort_training_json,
        models_dir=cohort_models_dir,
        outdir=subpath(output.cindex, parent=True),
    shell:
        "healnet paper cohort --models {params.models} --models-dir {params.models_dir} "
        "--fold-files {input.folds} --labels {input.labels} {params.data} --outdir {params.outdir} "
        "--inspect {output.inspection} --paper {params.paper:q} --evaluation {params.evaluation:q} "
        "--patching {params.patching:q} --training {params.training:q} "
        "--threads {threads} --log {log}"


rule paper_tables:
    input:
        cindex=paper_files("cindex.tsv"),
        missing=paper_files("cindex_missing.tsv"),
        xor=paper_files("xor.tsv"),
    output:
        table1=report(
            "results/paper/table1.tsv",
            caption="../report/paper_table1.rst",
            category="Paper",
        ),
        table1_md=report(
            "results/paper/table1.md",
            caption="../report/paper_table1.rst",
            category="Paper",
        ),
        table2=report(
            "results/paper/table2.tsv",
            caption="../report/paper_table2.rst",
            category="Paper",
        ),
    log:
        "logs/paper/tables.log",
    conda:
        "../../envs/healnet.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        cohorts=" ".join(CFG.paper.cohorts),
        cohort_keys=paper_cohort_keys,
        paper=section_json("paper"),
        modalities=paper_modalities_json,
    shell:
        "healnet paper tables --cohorts {params.cohorts} --cohort-keys {params.cohort_keys} "
        "--cindex {input.cindex} --missing {input.missing} --xor {input.xor} "
        "--paper {params.paper:q} --modalities {params.modalities:q} --table1 {output.table1} "
        "--table1-md {output.table1_md} --table2 {output.table2} --log {log}"


rule paper_figures:
    input:
        cindex=paper_files("cindex.tsv"),
    output:
        png=report(
            "results/paper/uplift.png",
            caption="../report/paper_uplift.rst",
            category="Paper",
        ),
        tsv="results/paper/uplift.tsv",
    log:
        "logs/paper/figures.log",
    conda:
        "../../envs/healnet.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        cohorts=" ".join(CFG.paper.cohorts),
        cohort_keys=paper_cohort_keys,
        paper=section_json("paper"),
        modalities=paper_modalities_json,
    shell:
        "healnet paper figures --cohorts {params.cohorts} --cohort-keys {params.cohort_keys} "
        "--cindex {input.cindex} --paper {params.paper:q} --modalities {params.modalities:q} "
        "--png {output.png} --tsv {output.tsv} --log {log}"
