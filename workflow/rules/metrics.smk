rule cell_metrics:
    """Tunnel metrics of one cell against each of its OOD sets, and its training health."""
    input:
        probes=probe_tables,
        info=rules.pretrain.output.info,
        train_log=rules.pretrain.output.train_log,
    output:
        f"{RESULTS}/cells/{{cell}}/metrics.parquet",
    log:
        "logs/cell_metrics/{cell}.log",
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.metrics_params(wc.cell),
        health=lambda wc: STUDY.health_params(),
    script:
        "../scripts/cell_metrics.py"
