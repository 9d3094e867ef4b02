rule cell_metrics:
    """Tunnel metrics of one cell against each of its OOD sets."""
    input:
        probes=probe_tables,
        info=rules.pretrain.output.info,
    output:
        f"{RESULTS}/cells/{{cell}}/metrics.parquet",
    log:
        "logs/cell_metrics/{cell}.log",
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.metrics_params(wc.cell),
    script:
        "../scripts/cell_metrics.py"
