# Whole-slide images: tissue -> patches -> features per slide, and the per-cohort slide table
# (healnet/wsi). Every slide gets all outputs; a bad slide's carry `status: failed` and its reason
# (slide_reading.on_slide_error: skip) or stop the run (fail).


wildcard_constraints:
    encoder=wildcard_pattern("encoder"),


rule tissue:
    input:
        slide=slide_path,
    output:
        geojson="results/{cohort}/tissue/{slide}.geojson",
        qc=report(
            "results/{cohort}/qc/{slide}.png",
            caption="../report/wsi_tissue.rst",
            category="Slides",
            subcategory="{cohort}",
            labels={"cohort": "{cohort}", "slide": "{slide}"},
        ),
    log:
        "logs/{cohort}/tissue/{slide}.log",
    benchmark:
        "benchmarks/{cohort}/tissue/{slide}.tsv"
    conda:
        "../../envs/healnet.yaml"
    threads: 1
    # a thumbnail at 8 um/px: ~25 MB for a 100k x 80k slide; seconds per slide
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        mpp=slide_sheet_mpp,
        cohort_mpp=cohort_mpp,
        reading=section_json("slide_reading"),
        tissue=section_json("tissue"),
        patching=section_json("patching"),
    shell:
        "healnet tissue --slide {input.slide:q} --slide-id {wildcards.slide:q} --mpp '{params.mpp}' "
        "--cohort-mpp '{params.cohort_mpp}' --geojson {output.geojson} --qc {output.qc} --reading {params.reading:q} "
        "--tissue {params.tissue:q} --patching {params.patching:q} --log {log}"


rule patches:
    input:
        slide=slide_path,
        tissue="results/{cohort}/tissue/{slide}.geojson",
    output:
        directory("results/{cohort}/patches/{slide}.zarr"),
    log:
        "logs/{cohort}/patches/{slide}.log",
    benchmark:
        "benchmarks/{cohort}/patches/{slide}.tsv"
    conda:
        "../../envs/healnet.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        reading=section_json("slide_reading"),
        patching=section_json("patching"),
    shell:
        "healnet patches --slide {input.slide:q} --slide-id {wildcards.slide:q} --tissue {input.tissue} "
        "--output {output} --reading {params.reading:q} --patching {params.patching:q} --log {log}"


rule features:
    input:
        slide=slide_path,
        patches="results/{cohort}/patches/{slide}.zarr",
    output:
        directory("results/{cohort}/features/{encoder}/{slide}.zarr"),
    log:
        "logs/{cohort}/features/{encoder}/{slide}.log",
    benchmark:
        "benchmarks/{cohort}/features/{encoder}/{slide}.tsv"
    conda:
        "../../envs/healnet.yaml"
    threads: CFG.features.num_workers + 1  # reader processes + the main process feeding the model
    resources:
        gpu=GPU_JOB,
        mem_mb=8000,
    params:
        encoder=encoder_json,
        features=section_json("features"),
        reading=section_json("slide_reading"),
    shell:
        "healnet features --slide {input.slide:q} --patches {input.patches} --output {output} "
        "--encoder-name {wildcards.encoder} --encoder {params.encoder:q} --features {params.features:q} "
        "--reading {params.reading:q} --threads {threads} --log {log}"


rule slides_qc:
    input:
        sheet=cohort_sheet,
        stores=feature_stores,
    output:
        "results/{cohort}/qc/slides.tsv",  # in the report as HTML: rules/report.smk
    log:
        "logs/{cohort}/slides_qc.log",
    conda:
        "../../envs/healnet.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "healnet slides-qc --sheet {input.sheet} --stores {input.stores} --output {output} --log {log}"
