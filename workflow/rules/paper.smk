# The paper build: its tables, the cross-grid figures, provenance and a static page; a rule per
# output, and the target rule paper for all of them. Captions: tunnelscope.figures.captions.
from tunnelscope.figures.captions import ANALYSIS_TABLES, TABLES, figure_caption, table_caption

# A lean study builds only the study-level parts its grid can fill (Study.absent_parts says why
# the others are not there).
STUDY_TABLES = [t for t in TABLES if t not in ANALYSIS_TABLES or STUDY.builds("analysis")]
SLOPES = [rules.analysis.output.slopes] if STUDY.builds("analysis") else []


rule paper_table:
    """One of the paper's tables (Table 11, Tables 4-7, 12, 13) from this study, CSV and LaTeX."""
    input:
        cells=AGGREGATE["cells"],
        metrics=AGGREGATE["metrics"],
        # only Tables 1, 12 and 13 read the analysis
        paired=lambda wc: rules.analysis.output.paired if wc.table in ANALYSIS_TABLES else [],
        means=lambda wc: rules.analysis.output.means if wc.table in ANALYSIS_TABLES else [],
    output:
        csv=report(
            PATHS.path("paper_table", ext="csv"),
            caption="../report/paper_table.rst",
            category="Tables",
        ),
        tex=PATHS.path("paper_table", ext="tex"),
    log:
        PATHS.log("paper_table"),
    wildcard_constraints:
        table="|".join(TABLES),
    conda:
        ENV
    params:
        caption=lambda wc: table_caption(wc.table, STUDY.seed_params()["confidence"]),
        seeds=lambda wc: STUDY.seed_params(),
        # Tables 4-7 summarise the metrics rows; Table 11 lists every cell, the rest come from the analysis.
        untrained=lambda wc: STUDY.untrained_params() if wc.table not in ("id_accuracy", *ANALYSIS_TABLES) else {},
    script:
        "../scripts/paper_table.py"


rule curves_by_variable_figure:
    """Mean normalised OOD curve per level of each variable that varies in the grid."""
    input:
        curves=AGGREGATE["curves"],
        metrics=AGGREGATE["metrics"],
    output:
        png=report(
            PATHS.path("paper_figure", figure="curves_by_variable", ext="png"),
            caption="../report/curves_by_variable.rst",
            category="Variables",
        ),
        pdf=PATHS.path("paper_figure", figure="curves_by_variable", ext="pdf"),
    log:
        PATHS.log("curves_by_variable_figure"),
    conda:
        ENV
    params:
        seeds=lambda wc: STUDY.seed_params(),
        untrained=lambda wc: STUDY.untrained_params(),
        caption=lambda wc: figure_caption("curves_by_variable", STUDY.seed_params()["confidence"]),
    script:
        "../scripts/curves_by_variable_figure.py"


rule shap_slopes_figure:
    """SHAP slope of each variable on each target."""
    input:
        rules.analysis.output.slopes,
    output:
        png=report(
            PATHS.path("paper_figure", figure="shap_slopes", ext="png"),
            caption="../report/shap_slopes.rst",
            category="Analysis",
        ),
        pdf=PATHS.path("paper_figure", figure="shap_slopes", ext="pdf"),
    log:
        PATHS.log("shap_slopes_figure"),
    conda:
        ENV
    params:
        caption=lambda wc: figure_caption("shap_slopes", STUDY.seed_params()["confidence"]),
    script:
        "../scripts/shap_slopes_figure.py"


rule strength_histogram_figure:
    """Backbones per tunnel-strength class."""
    input:
        AGGREGATE["metrics"],
    output:
        png=report(
            PATHS.path("paper_figure", figure="strength_histogram", ext="png"),
            caption="../report/strength_histogram.rst",
            category="Analysis",
        ),
        pdf=PATHS.path("paper_figure", figure="strength_histogram", ext="pdf"),
    log:
        PATHS.log("strength_histogram_figure"),
    conda:
        ENV
    params:
        untrained=lambda wc: STUDY.untrained_params(),
        caption=lambda wc: figure_caption("strength_histogram", STUDY.seed_params()["confidence"]),
    script:
        "../scripts/strength_histogram_figure.py"


rule layer_stats_figure:
    """Per-layer statistics of the ID embeddings over relative depth, every cell."""
    input:
        AGGREGATE["layer_stats"],
    output:
        png=report(
            PATHS.path("paper_figure", figure="layer_stats", ext="png"),
            caption="../report/layer_stats.rst",
            category="Representations",
        ),
        pdf=PATHS.path("paper_figure", figure="layer_stats", ext="pdf"),
    log:
        PATHS.log("layer_stats_figure"),
    conda:
        ENV
    params:
        seeds=lambda wc: STUDY.seed_params(),
        caption=lambda wc: figure_caption("layer_stats", STUDY.seed_params()["confidence"]),
    script:
        "../scripts/layer_stats_figure.py"


rule provenance:
    """The study's cells, its whole config, the git commit and software versions that built it
    and the devices its cells ran on."""
    input:
        metrics=AGGREGATE["metrics"],
        cells=AGGREGATE["cells"],
    output:
        PATHS.path("provenance"),
    log:
        PATHS.log("provenance"),
    conda:
        ENV
    params:
        config=lambda wc: STUDY.config,
    script:
        "../scripts/provenance.py"


rule paper_page:
    """A static page with every paper figure and table, readable without Snakemake."""
    input:
        overview=rules.overview_figure.output.png,
        figures=[
            *([rules.curves_by_variable_figure.output.png] if STUDY.builds("analysis") else []),
            *([rules.shap_slopes_figure.output.png] if STUDY.builds("shap_figure") else []),
            *([rules.strength_histogram_figure.output.png] if STUDY.builds("strength_histogram") else []),
            rules.layer_stats_figure.output.png,
            rules.best_layers_figure.output.png,
        ],
        tables=expand(rules.paper_table.output.csv, table=STUDY_TABLES),
        best_layers=rules.best_layers_table.output.summary,
        slopes=SLOPES,
        provenance=rules.provenance.output[0],
        cells=AGGREGATE["cells"],
        curves=AGGREGATE["curves"],  # its failure column: the probe-health lines
        more=lambda wc: page_items(),
    output:
        PATHS.path("paper_page"),
    log:
        PATHS.log("paper_page"),
    conda:
        ENV
    params:
        seeds=lambda wc: STUDY.seed_params(),
        alpha=lambda wc: STUDY.config["metrics"]["alpha"],
        untrained=lambda wc: STUDY.untrained_params(),
        absent=lambda wc: STUDY.absent_parts(),
        captions=lambda wc: page_captions(),
    script:
        "../scripts/paper_page.py"


rule paper:
    """Target: the paper build (snakemake paper)."""
    input:
        rules.paper_page.input.tables,
        rules.paper_page.output,
        rules.provenance.output,
        rules.curves_by_variable_figure.output if STUDY.builds("analysis") else [],
        rules.shap_slopes_figure.output if STUDY.builds("shap_figure") else [],
        rules.strength_histogram_figure.output if STUDY.builds("strength_histogram") else [],
        rules.layer_stats_figure.output,
