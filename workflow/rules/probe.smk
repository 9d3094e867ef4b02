rule probe:
    """Fit one linear probe per layer of one (cell, eval set) with one solver, all layers in this
    job; the table, every layer's probe weights and its class for each test image."""
    input:
        embeddings=rules.embed.output,
        info=rules.pretrain.output.info,
    output:
        table=PATHS.path("probe_table"),
        weights=PATHS.path("probe_weights"),
        predictions=PATHS.path("probe_predictions"),
    log:
        PATHS.log("probe"),
    benchmark:
        PATHS.benchmark("probe")
    conda:
        ENV
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
        device=DEVICE,
        # Not a param: the embeddings it reads change when it does (embed's params hold it).
        deterministic=int(STUDY.config["compute"]["deterministic"]),
    params:
        settings=lambda wc: STUDY.probe_params(wc.cell, wc.eval_set, wc.solver),
    script:
        "../scripts/probe.py"
