rule aggregate:
    """Tidy tables over all cells: probe curves, tunnel metrics, cell facts (Parquet + CSV)."""
    input:
        probes=[f"{RESULTS}/cells/{c}/probes/{e}.parquet" for c in CELLS for e in STUDY.eval_sets(c)],
        metrics=expand(f"{RESULTS}/cells/{{cell}}/metrics.parquet", cell=CELLS),
        info=expand(f"{RESULTS}/cells/{{cell}}/cell.json", cell=CELLS),
    output:
        curves=f"{RESULTS}/aggregate/curves.parquet",
        curves_csv=f"{RESULTS}/aggregate/curves.csv",
        metrics=f"{RESULTS}/aggregate/metrics.parquet",
        metrics_csv=f"{RESULTS}/aggregate/metrics.csv",
        cells=f"{RESULTS}/aggregate/cells.parquet",
        cells_csv=f"{RESULTS}/aggregate/cells.csv",
    log:
        "logs/aggregate.log",
    conda:
        ENV
    script:
        "../scripts/aggregate.py"
