# Probe protocols side by side on the same embeddings: zero-shot against the paper's protocol on
# shifted copies of the ID set, and the solvers of a probe.solver list against the first one.
# Which cells take part: common.smk.

from tunnelscope.figures.captions import item_caption


rule zero_shot:
    """ID-trained probes scored on a shifted copy of the ID test split (layer chosen on a small
    part of it), beside the probe trained on the shifted set, on the same rows."""
    input:
        id_probes=lambda wc: probe_table(wc.cell, STUDY.cells[wc.cell].id_dataset),
        id_weights=lambda wc: probe_table(wc.cell, STUDY.cells[wc.cell].id_dataset, suffix=".weights.npz"),
        shifted_weights=lambda wc: probe_table(wc.cell, wc.eval_set, suffix=".weights.npz"),
        clean=lambda wc: f"{RESULTS}/cells/{wc.cell}/embeddings/{STUDY.cells[wc.cell].id_dataset}",
        shifted=lambda wc: f"{RESULTS}/cells/{wc.cell}/embeddings/{wc.eval_set}",
    output:
        f"{RESULTS}/cells/{{cell}}/zero_shot/{{eval_set}}.parquet",
    log:
        f"{RESULTS}/logs/zero_shot/{{cell}}_{{eval_set}}.log",
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.zero_shot_params(wc.cell, wc.eval_set),
    script:
        "../scripts/zero_shot.py"


rule zero_shot_table:
    """Zero-shot against the paper's protocol over the study: per-layer table, summary, figure."""
    input:
        [f"{RESULTS}/cells/{c}/zero_shot/{e}.parquet" for c, e in zero_shot_pairs()],
    output:
        layers=f"{RESULTS}/aggregate/zero_shot.parquet",
        layers_csv=f"{RESULTS}/aggregate/zero_shot.csv",
        csv=report(
            f"{RESULTS}/paper/tables/zero_shot.csv",
            caption="../report/zero_shot.rst",
            category="Protocols",
        ),
        tex=f"{RESULTS}/paper/tables/zero_shot.tex",
        png=report(
            f"{RESULTS}/paper/zero_shot.png",
            caption="../report/zero_shot.rst",
            category="Protocols",
        ),
        pdf=f"{RESULTS}/paper/zero_shot.pdf",
    log:
        f"{RESULTS}/logs/zero_shot_table.log",
    conda:
        ENV
    params:
        seeds=lambda wc: STUDY.seed_params(),
        caption=item_caption("paper/zero_shot.png"),
    script:
        "../scripts/zero_shot_table.py"


rule solver_metrics:
    """One cell's tunnel metrics under each of its probe solvers."""
    input:
        probes=lambda wc: [probe_table(wc.cell, e, s) for s in STUDY.solvers(wc.cell) for e in STUDY.eval_sets(wc.cell)],
        predictions=lambda wc: [
            probe_table(wc.cell, e, s, ".predictions.parquet")
            for s in STUDY.solvers(wc.cell)
            for e in STUDY.eval_sets(wc.cell)
        ],
        info=rules.pretrain.output.info,
    output:
        f"{RESULTS}/cells/{{cell}}/solver_metrics.parquet",
    log:
        f"{RESULTS}/logs/solver_metrics/{{cell}}.log",
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
            f"{RESULTS}/cells/{{cell}}/solver_metrics.parquet",
            cell=multi_solver_cells(),
        ),
    output:
        metrics=f"{RESULTS}/aggregate/solver_metrics.parquet",
        metrics_csv=f"{RESULTS}/aggregate/solver_metrics.csv",
        csv=report(
            f"{RESULTS}/paper/tables/solvers.csv",
            caption="../report/solvers.rst",
            category="Protocols",
        ),
        tex=f"{RESULTS}/paper/tables/solvers.tex",
        png=report(
            f"{RESULTS}/paper/solvers.png",
            caption="../report/solvers.rst",
            category="Protocols",
        ),
        pdf=f"{RESULTS}/paper/solvers.pdf",
    log:
        f"{RESULTS}/logs/solver_table.log",
    conda:
        ENV
    params:
        reference=lambda wc: STUDY.solvers(multi_solver_cells()[0])[0],
        seeds=lambda wc: STUDY.seed_params(),
        caption=item_caption("paper/solvers.png"),
    script:
        "../scripts/solver_table.py"
