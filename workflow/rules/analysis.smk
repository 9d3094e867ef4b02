rule layer_stats:
    """Per layer on the ID set's test split: numerical rank, RankMe, NC1, CKA to the last layer."""
    input:
        lambda wc: f"{RESULTS}/cells/{wc.cell}/embeddings/{STUDY.cells[wc.cell].id_dataset}",
    output:
        f"{RESULTS}/cells/{{cell}}/layer_stats.parquet",
    log:
        f"{RESULTS}/logs/layer_stats/{{cell}}.log",
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
        slopes=f"{RESULTS}/analysis/shap_slopes.csv",
        fit=f"{RESULTS}/analysis/shap_fit.csv",
        paired=f"{RESULTS}/analysis/paired_tests.csv",
        means=f"{RESULTS}/analysis/level_means.csv",
    log:
        f"{RESULTS}/logs/analysis.log",
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.analysis_params(),
    script:
        "../scripts/analysis.py"
