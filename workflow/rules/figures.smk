from tunnelscope.figures.captions import figure_caption, item_caption


rule cell_figure:
    """Per cell: probe accuracy per eval set with intervals and chance, and the normalised tunnel
    view with its star."""
    input:
        probe_tables,
    output:
        png=report(
            f"{RESULTS}/cells/{{cell}}/figure.png",
            caption="../report/cell_figure.rst",
            category="Cells",
        ),
        pdf=f"{RESULTS}/cells/{{cell}}/figure.pdf",
    log:
        f"{RESULTS}/logs/cell_figure/{{cell}}.log",
    conda:
        ENV
    params:
        title=lambda wc: wc.cell,
        confidence=lambda wc: 1 - STUDY.config["metrics"]["alpha"],
        caption=lambda wc: item_caption(f"cells/{wc.cell}/figure.png", 1 - STUDY.config["metrics"]["alpha"]),
    script:
        "../scripts/cell_figure.py"


rule overview_figure:
    """All cells' normalised tunnel curves on one page."""
    input:
        AGGREGATE["curves"],
    output:
        png=report(
            f"{RESULTS}/figures/tunnel_curves.png",
            caption="../report/tunnel_curves.rst",
            category="Overview",
        ),
        pdf=f"{RESULTS}/figures/tunnel_curves.pdf",
    log:
        f"{RESULTS}/logs/overview_figure.log",
    conda:
        ENV
    params:
        seeds=lambda wc: STUDY.seed_params(),
        caption=lambda wc: figure_caption("tunnel_curves", STUDY.seed_params()["confidence"]),
        absent=lambda wc: STUDY.absent_parts(),  # the report says why a part is missing
    script:
        "../scripts/overview_figure.py"


rule tsne:
    """Per cell: t-SNE coordinates of the ID test embeddings at every probed layer."""
    input:
        embeddings=lambda wc: f"{RESULTS}/cells/{wc.cell}/embeddings/{STUDY.cells[wc.cell].id_dataset}",
    output:
        coords=f"{RESULTS}/cells/{{cell}}/tsne.parquet",
    log:
        f"{RESULTS}/logs/tsne/{{cell}}.log",
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.tsne_params(wc.cell),
    script:
        "../scripts/tsne.py"


rule tsne_figure:
    """Per cell: the t-SNE panels beside the rank curve (so a layer_stats setting reruns no fit)."""
    input:
        coords=rules.tsne.output.coords,
        layer_stats=rules.layer_stats.output,
    output:
        png=report(
            f"{RESULTS}/cells/{{cell}}/tsne.png",
            caption="../report/tsne.rst",
            category="Cells",
        ),
        pdf=f"{RESULTS}/cells/{{cell}}/tsne.pdf",
    log:
        f"{RESULTS}/logs/tsne_figure/{{cell}}.log",
    conda:
        ENV
    params:
        title=lambda wc: wc.cell,
        caption=lambda wc: item_caption(f"cells/{wc.cell}/tsne.png"),
    script:
        "../scripts/tsne_figure.py"


rule best_layers_figure:
    """Every backbone and OOD set: accuracy per layer with intervals, the best and the
    validation-chosen layers."""
    input:
        best=rules.best_layers_table.output.table,
        curves=AGGREGATE["curves"],
    output:
        png=report(
            f"{RESULTS}/figures/best_layers.png",
            caption="../report/best_layers.rst",
            category="Overview",
        ),
        pdf=f"{RESULTS}/figures/best_layers.pdf",
    log:
        f"{RESULTS}/logs/best_layers_figure.log",
    conda:
        ENV
    params:
        caption=lambda wc: figure_caption("best_layers"),
    script:
        "../scripts/best_layers_figure.py"
