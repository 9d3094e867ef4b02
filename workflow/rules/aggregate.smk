from tunnelscope.figures.captions import best_layers_caption, item_caption


rule aggregate_table:
    """One tidy table over all cells (probe curves, tunnel metrics or layer statistics) and its seed
    summary (mean and t-interval per backbone)."""
    input:
        aggregate_inputs,
    output:
        table=PATHS.path("aggregate", ext="parquet"),
        csv=PATHS.path("aggregate", ext="csv"),
        seeds=PATHS.path("aggregate_seeds", ext="parquet"),
        seeds_csv=PATHS.path("aggregate_seeds", ext="csv"),
    log:
        PATHS.log("aggregate_{table}"),
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
        info=expand(PATHS.path("cell_info"), cell=CELLS),
        train_logs=expand(PATHS.path("train_log"), cell=CELLS),
    output:
        table=AGGREGATE["cells"],
        csv=report(
            PATHS.path("aggregate", table="cells", ext="csv"),
            caption="../report/cells.rst",
            category="Training health",
        ),
    log:
        PATHS.log("aggregate_cells"),
    conda:
        ENV
    params:
        health=lambda wc: STUDY.health_params(),
        caption=lambda wc: item_caption(relative("aggregate", table="cells", ext="csv"), health=STUDY.health_params()),
    script:
        "../scripts/aggregate.py"


rule best_layers_table:
    """The cells' best layers in one table, and its readable form for the report and the page."""
    input:
        expand(PATHS.path("best_layers"), cell=CELLS),
    output:
        table=PATHS.path("aggregate", table="best_layers", ext="parquet"),
        csv=PATHS.path("aggregate", table="best_layers", ext="csv"),
        summary=report(
            PATHS.path("paper_table", table="best_layers", ext="csv"),
            caption="../report/best_layers_table.rst",
            category="Tables",
        ),
    log:
        PATHS.log("best_layers_table"),
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
        expand(PATHS.path("aggregate_seeds", ext="parquet"), table=AGGREGATED),
