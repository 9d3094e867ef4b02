rule paper:
    """The paper build: cross-grid figures, tables as CSV and LaTeX, provenance, a static page."""
    input:
        curves=rules.aggregate.output.curves,
        metrics=rules.aggregate.output.metrics,
        layer_stats=rules.aggregate.output.layer_stats,
        slopes=rules.analysis.output.slopes,
        paired=rules.analysis.output.paired,
        means=rules.analysis.output.means,
        overview=rules.overview_figure.output.png,
    output:
        variables=report(f"{RESULTS}/paper/curves_by_variable.png", caption="../report/curves_by_variable.rst", category="Variables"),
        variables_pdf=f"{RESULTS}/paper/curves_by_variable.pdf",
        shap=report(f"{RESULTS}/paper/shap_slopes.png", caption="../report/shap_slopes.rst", category="Analysis"),
        shap_pdf=f"{RESULTS}/paper/shap_slopes.pdf",
        strength=report(f"{RESULTS}/paper/strength_histogram.png", caption="../report/strength_histogram.rst", category="Analysis"),
        strength_pdf=f"{RESULTS}/paper/strength_histogram.pdf",
        layer_stats=report(f"{RESULTS}/paper/layer_stats.png", caption="../report/layer_stats.rst", category="Representations"),
        layer_stats_pdf=f"{RESULTS}/paper/layer_stats.pdf",
        means=report(f"{RESULTS}/paper/level_means.csv", caption="../report/level_means.rst", category="Tables"),
        means_tex=f"{RESULTS}/paper/level_means.tex",
        paired=report(f"{RESULTS}/paper/paired_tests.csv", caption="../report/paired_tests.rst", category="Tables"),
        paired_tex=f"{RESULTS}/paper/paired_tests.tex",
        provenance=f"{RESULTS}/paper/provenance.json",
        page=f"{RESULTS}/paper/index.html",
    params:
        config=lambda wc: STUDY.config,
    log:
        "logs/paper.log",
    conda:
        ENV
    script:
        "../scripts/paper.py"
