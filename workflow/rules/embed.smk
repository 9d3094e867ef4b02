rule embed:
    """One forward pass per image of an eval set; one Parquet file per probed layer."""
    input:
        checkpoint=rules.pretrain.output.checkpoint,
        data=lambda wc: STUDY.prepared_path(wc.eval_set, wc.cell),
    output:
        embeddings_output(PATHS.path("embeddings")),
    log:
        PATHS.log("embed"),
    benchmark:
        PATHS.benchmark("embed")
    conda:
        ENV
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_PER_JOB,
        device=DEVICE,
        # Splits up to this size stay on the device; a speed knob (the same crops either way).
        resident_mb=lambda wc: STUDY.config["compute"]["resident_mb"],
        # Images per forward pass: a resource, not a param, because it does not change results.
        embed_batch=lambda wc: STUDY.config["embed"]["batch_size"],
    params:
        settings=lambda wc: STUDY.embed_params(wc.cell, wc.eval_set),
    script:
        "../scripts/embed.py"
