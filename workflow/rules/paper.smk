from tunnelscope.captions import TABLES, table_caption


rule paper_table:
    """One of the paper's tables (Table 11, Tables 4-7, 12, 13) from this study, CSV and LaTeX."""
    input:
        cells=rules.aggregate.output.cells,
        metrics=rules.aggregate.output.metrics,
        paired=rules.analysis.output.paired,
        means=rules.analysis.output.means,
    output:
        csv=report(
            f"{RESULTS}/paper/tables/{{table}}.csv",
            caption="../report/paper_table.rst",
            category="Tables",
        ),
        tex=f"{RESULTS}/paper/tables/{{table}}.tex",
    log:
        "logs/paper_table/{table}.log",
    wildcard_constraints:
        table="|".join(TABLES),
    conda:
        ENV
    params:
        caption=lambda wc: table_caption(wc.table, STUDY.seed_params()["confidence"]),
        seeds=lambda wc: STUDY.seed_params(),
    script:
        "../scripts/paper_table.py"


rule paper:
    """The paper build: cross-grid figures, provenance, and a static page with the tables."""
    input:
        curves=rules.aggregate.output.curves,
        metrics=rules.aggregate.output.metrics,
        layer_stats=rules.aggregate.output.layer_stats,
        slopes=rules.analysis.output.slopes,
        overview=rules.overview_figure.output.png,
        tables=expand(f"{RESULTS}/paper/tables/{{table}}.csv", table=TABLES),
    output:
        variables=report(
            f"{RESULTS}/paper/curves_by_variable.png",
            caption="../report/curves_by_variable.rst",
            category="Variables",
        ),
        variables_pdf=f"{RESULTS}/paper/curves_by_variable.pdf",
        shap=report(
            f"{RESULTS}/paper/shap_slopes.png",
            caption="../report/shap_slopes.rst",
            category="Analysis",
        ),
        shap_pdf=f"{RESULTS}/paper/shap_slopes.pdf",
        strength=report(
            f"{RESULTS}/paper/strength_histogram.png",
            caption="../report/strength_histogram.rst",
            category="Analysis",
        ),
        strength_pdf=f"{RESULTS}/paper/strength_histogram.pdf",
        layer_stats=report(
            f"{RESULTS}/paper/layer_stats.png",
            caption="../report/layer_stats.rst",
            category="Representations",
        ),
        layer_stats_pdf=f"{RESULTS}/paper/layer_stats.pdf",
        provenance=f"{RESULTS}/paper/provenance.json",
        page=f"{RESULTS}/paper/index.html",
    log:
        "logs/paper.log",
    conda:
        ENV
    params:
        config=lambda wc: STUDY.config,
        seeds=lambda wc: STUDY.seed_params(),
    script:
        "../scripts/paper.py"
