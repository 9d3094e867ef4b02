from tunnelscope.figures.captions import figure_caption, item_caption


rule cell_figure:
    """Per cell: probe accuracy per eval set with intervals and chance, and the normalised tunnel
    view with its star."""
    input:
        probe_tables,
    output:
        png=report(
            PATHS.path("cell_figure", ext="png"),
            caption="../report/cell_figure.rst",
            category="Cells",
        ),
        pdf=PATHS.path("cell_figure", ext="pdf"),
    log:
        PATHS.log("cell_figure"),
    conda:
        ENV
    params:
        title=lambda wc: wc.cell,
        confidence=lambda wc: 1 - STUDY.config["metrics"]["alpha"],
        caption=lambda wc: item_caption(
            relative("cell_figure", cell=wc.cell, ext="png"), 1 - STUDY.config["metrics"]["alpha"]
        ),
    script:
        "../scripts/cell_figure.py"


rule overview_figure:
    """All cells' normalised tunnel curves on one page."""
    input:
        AGGREGATE["curves"],
    output:
        png=report(
            PATHS.path("figure", figure="tunnel_curves", ext="png"),
            caption="../report/tunnel_curves.rst",
            category="Overview",
        ),
        pdf=PATHS.path("figure", figure="tunnel_curves", ext="pdf"),
    log:
        PATHS.log("overview_figure"),
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
        embeddings=id_embeddings,
    output:
        coords=PATHS.path("tsne"),
    log:
        PATHS.log("tsne"),
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
            PATHS.path("tsne_figure", ext="png"),
            caption="../report/tsne.rst",
            category="Cells",
        ),
        pdf=PATHS.path("tsne_figure", ext="pdf"),
    log:
        PATHS.log("tsne_figure"),
    conda:
        ENV
    params:
        title=lambda wc: wc.cell,
        caption=lambda wc: item_caption(relative("tsne_figure", cell=wc.cell, ext="png")),
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
            PATHS.path("figure", figure="best_layers", ext="png"),
            caption="../report/best_layers.rst",
            category="Overview",
        ),
        pdf=PATHS.path("figure", figure="best_layers", ext="pdf"),
    log:
        PATHS.log("best_layers_figure"),
    conda:
        ENV
    params:
        caption=lambda wc: figure_caption("best_layers"),
    script:
        "../scripts/best_layers_figure.py"
