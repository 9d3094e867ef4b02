rule aggregate:
    """Tidy tables over all cells: probe curves, tunnel metrics, layer statistics, cell facts."""
    input:
        probes=[probe_table(c, e) for c in CELLS for e in STUDY.eval_sets(c)],
        metrics=expand(f"{RESULTS}/cells/{{cell}}/metrics.parquet", cell=CELLS),
        info=expand(f"{RESULTS}/cells/{{cell}}/cell.json", cell=CELLS),
        layer_stats=expand(f"{RESULTS}/cells/{{cell}}/layer_stats.parquet", cell=CELLS),
    output:
        curves=f"{RESULTS}/aggregate/curves.parquet",
        curves_csv=f"{RESULTS}/aggregate/curves.csv",
        metrics=f"{RESULTS}/aggregate/metrics.parquet",
        metrics_csv=f"{RESULTS}/aggregate/metrics.csv",
        cells=f"{RESULTS}/aggregate/cells.parquet",
        cells_csv=f"{RESULTS}/aggregate/cells.csv",
        layer_stats=f"{RESULTS}/aggregate/layer_stats.parquet",
        layer_stats_csv=f"{RESULTS}/aggregate/layer_stats.csv",
    log:
        "logs/aggregate.log",
    conda:
        ENV
    script:
        "../scripts/aggregate.py"
