# Probe protocols side by side on the same embeddings: zero-shot against the paper's protocol on
# shifted copies of the ID set, and the solvers of a probe.solver list against the first one.
# Which cells take part: common.smk.

from tunnelscope.figures.captions import item_caption


rule zero_shot:
    """ID-trained probes scored on a shifted copy of the ID test split (layer chosen on a small
    part of it), beside the probe trained on the shifted set, on the same rows."""
    input:
        id_probes=lambda wc: probe_file(wc.cell, STUDY.cells[wc.cell].id_dataset),
        id_weights=lambda wc: probe_file(wc.cell, STUDY.cells[wc.cell].id_dataset, name="probe_weights"),
        shifted_weights=lambda wc: probe_file(wc.cell, wc.eval_set, name="probe_weights"),
        clean=id_embeddings,
        shifted=lambda wc: PATHS.path("embeddings", cell=wc.cell, eval_set=wc.eval_set),
    output:
        PATHS.path("zero_shot"),
    log:
        PATHS.log("zero_shot"),
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.zero_shot_params(wc.cell, wc.eval_set),
    script:
        "../scripts/zero_shot.py"


rule zero_shot_table:
    """Zero-shot against the paper's protocol over the study: per-layer table, summary, figure."""
    input:
        [PATHS.path("zero_shot", cell=c, eval_set=e) for c, e in zero_shot_pairs()],
    output:
        layers=PATHS.path("aggregate", table="zero_shot", ext="parquet"),
        layers_csv=PATHS.path("aggregate", table="zero_shot", ext="csv"),
        csv=report(
            PATHS.path("paper_table", table="zero_shot", ext="csv"),
            caption="../report/zero_shot.rst",
            category="Protocols",
        ),
        tex=PATHS.path("paper_table", table="zero_shot", ext="tex"),
        png=report(
            PATHS.path("paper_figure", figure="zero_shot", ext="png"),
            caption="../report/zero_shot.rst",
            category="Protocols",
        ),
        pdf=PATHS.path("paper_figure", figure="zero_shot", ext="pdf"),
    log:
        PATHS.log("zero_shot_table"),
    conda:
        ENV
    params:
        seeds=lambda wc: STUDY.seed_params(),
        caption=item_caption(relative("paper_figure", figure="zero_shot", ext="png")),
    script:
        "../scripts/zero_shot_table.py"


rule solver_metrics:
    """One cell's tunnel metrics under each of its probe solvers."""
    input:
        probes=lambda wc: [probe_file(wc.cell, e, s) for s in STUDY.solvers(wc.cell) for e in STUDY.eval_sets(wc.cell)],
        predictions=lambda wc: [
            probe_file(wc.cell, e, s, "probe_predictions")
            for s in STUDY.solvers(wc.cell)
            for e in STUDY.eval_sets(wc.cell)
        ],
        info=rules.pretrain.output.info,
    output:
        PATHS.path("solver_metrics"),
    log:
        PATHS.log("solver_metrics"),
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.metrics_params(wc.cell),
    script:
        "../scripts/cell_metrics.py"


rule solver_table:
    """How r, rho, A and the tunnel start move between solvers on the same embeddings."""
    input:
        expand(
            PATHS.path("solver_metrics"),
            cell=multi_solver_cells(),
        ),
    output:
        metrics=PATHS.path("aggregate", table="solver_metrics", ext="parquet"),
        metrics_csv=PATHS.path("aggregate", table="solver_metrics", ext="csv"),
        csv=report(
            PATHS.path("paper_table", table="solvers", ext="csv"),
            caption="../report/solvers.rst",
            category="Protocols",
        ),
        tex=PATHS.path("paper_table", table="solvers", ext="tex"),
        png=report(
            PATHS.path("paper_figure", figure="solvers", ext="png"),
            caption="../report/solvers.rst",
            category="Protocols",
        ),
        pdf=PATHS.path("paper_figure", figure="solvers", ext="pdf"),
    log:
        PATHS.log("solver_table"),
    conda:
        ENV
    params:
        reference=lambda wc: STUDY.solvers(multi_solver_cells()[0])[0],
        seeds=lambda wc: STUDY.seed_params(),
        caption=item_caption(relative("paper_figure", figure="solvers", ext="png")),
    script:
        "../scripts/solver_table.py"
