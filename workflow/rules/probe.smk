rule probe:
    """Fit one linear probe per layer of one (cell, eval set), all layers in this job."""
    input:
        embeddings=rules.embed.output,
        info=rules.pretrain.output.info,
    output:
        f"{RESULTS}/cells/{{cell}}/probes/{{eval_set}}.parquet",
    params:
        settings=lambda wc: STUDY.probe_params(wc.cell, wc.eval_set),
    threads: 1
    log:
        "logs/probe/{cell}_{eval_set}.log",
    benchmark:
        f"{RESULTS}/benchmarks/probe/{{cell}}_{{eval_set}}.tsv"
    conda:
        ENV
    script:
        "../scripts/probe.py"
