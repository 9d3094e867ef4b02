from tunnelscope.figures.captions import best_layers_caption, item_caption


rule aggregate_table:
    """One tidy table over all cells (probe curves, tunnel metrics or layer statistics) and its seed
    summary (mean and t-interval per backbone)."""
    input:
        aggregate_inputs,
    output:
        table=f"{RESULTS}/aggregate/{{table}}.parquet",
        csv=f"{RESULTS}/aggregate/{{table}}.csv",
        seeds=f"{RESULTS}/aggregate/{{table}}_seeds.parquet",
        seeds_csv=f"{RESULTS}/aggregate/{{table}}_seeds.csv",
    log:
        f"{RESULTS}/logs/aggregate_{{table}}.log",
    wildcard_constraints:
        table="|".join(AGGREGATED),
    conda:
        ENV
    params:
        seeds=lambda wc: STUDY.seed_params(),
    script:
        "../scripts/aggregate.py"


rule aggregate_cells:
    """The cells' facts (cell.json of each) and training health (metrics.health), one row per cell."""
    input:
        info=expand(f"{RESULTS}/cells/{{cell}}/cell.json", cell=CELLS),
        train_logs=expand(f"{RESULTS}/cells/{{cell}}/train_log.csv", cell=CELLS),
    output:
        table=AGGREGATE["cells"],
        csv=report(
            f"{RESULTS}/aggregate/cells.csv",
            caption="../report/cells.rst",
            category="Training health",
        ),
    log:
        f"{RESULTS}/logs/aggregate_cells.log",
    conda:
        ENV
    params:
        health=lambda wc: STUDY.health_params(),
        caption=lambda wc: item_caption("aggregate/cells.csv", health=STUDY.health_params()),
    script:
        "../scripts/aggregate.py"


rule best_layers_table:
    """The cells' best layers in one table, and its readable form for the report and the page."""
    input:
        expand(f"{RESULTS}/cells/{{cell}}/best_layers.parquet", cell=CELLS),
    output:
        table=f"{RESULTS}/aggregate/best_layers.parquet",
        csv=f"{RESULTS}/aggregate/best_layers.csv",
        summary=report(
            f"{RESULTS}/paper/tables/best_layers.csv",
            caption="../report/best_layers_table.rst",
            category="Tables",
        ),
    log:
        f"{RESULTS}/logs/best_layers_table.log",
    conda:
        ENV
    params:
        caption=lambda wc: best_layers_caption(STUDY.config["metrics"]["alpha"]),
    script:
        "../scripts/best_layers_table.py"


rule aggregate:
    """Target: every grid-wide table."""
    input:
        [path for name, path in AGGREGATE.items()],
        rules.best_layers_table.output,
        expand(f"{RESULTS}/aggregate/{{table}}_seeds.parquet", table=AGGREGATED),
