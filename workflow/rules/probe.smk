rule probe:
    """Fit one linear probe per layer of one (cell, eval set) with one solver, all layers in this
    job; the table, every layer's probe weights and its class for each test image."""
    input:
        embeddings=rules.embed.output,
        info=rules.pretrain.output.info,
    output:
        table=f"{RESULTS}/cells/{{cell}}/probes/{{solver}}/{{eval_set}}.parquet",
        weights=f"{RESULTS}/cells/{{cell}}/probes/{{solver}}/{{eval_set}}.weights.npz",
        predictions=f"{RESULTS}/cells/{{cell}}/probes/{{solver}}/{{eval_set}}.predictions.parquet",
    log:
        f"{RESULTS}/logs/probe/{{cell}}_{{eval_set}}_{{solver}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/probe/{{cell}}_{{eval_set}}_{{solver}}.tsv"
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
