rule tunnel_length:
    """MLP cells: ID-rule tunnel length against depth and width, and numerical rank per layer."""
    input:
        metrics=rules.aggregate.output.metrics,
        layer_stats=rules.aggregate.output.layer_stats,
    output:
        figure=report(
            f"{RESULTS}/tunnel_length/tunnel_length.png",
            caption="../report/tunnel_length.rst",
            category="Tunnel length",
        ),
        figure_pdf=f"{RESULTS}/tunnel_length/tunnel_length.pdf",
        rank=report(
            f"{RESULTS}/tunnel_length/rank_per_layer.png",
            caption="../report/rank_per_layer.rst",
            category="Tunnel length",
        ),
        rank_pdf=f"{RESULTS}/tunnel_length/rank_per_layer.pdf",
        cells=f"{RESULTS}/tunnel_length/tunnel_length_cells.csv",
        summary=f"{RESULTS}/tunnel_length/tunnel_length.csv",
        rank_table=f"{RESULTS}/tunnel_length/rank_per_layer.csv",
    log:
        "logs/tunnel_length.log",
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.tunnel_length_params(),
    script:
        "../scripts/tunnel_length.py"
