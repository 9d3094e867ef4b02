rule layer_stats:
    """Per layer on the ID set's test split: numerical rank, RankMe, NC1, CKA to the last layer."""
    input:
        id_embeddings,
    output:
        PATHS.path("layer_stats"),
    log:
        PATHS.log("layer_stats"),
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.layer_stats_params(wc.cell),
    script:
        "../scripts/layer_stats.py"


rule analysis:
    """SHAP slopes, the paired comparisons of analysis.comparisons and their level means."""
    input:
        AGGREGATE["metrics"],
    output:
        slopes=PATHS.path("analysis", table="shap_slopes"),
        fit=PATHS.path("analysis", table="shap_fit"),
        paired=PATHS.path("analysis", table="paired_tests"),
        means=PATHS.path("analysis", table="level_means"),
    log:
        PATHS.log("analysis"),
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.analysis_params(),
    script:
        "../scripts/analysis.py"
