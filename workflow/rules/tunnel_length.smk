# MLP cells (Masarczyk et al.): the ID-rule tunnel length against depth and width, and the
# numerical rank per layer; a rule per figure and its tables, the target rule tunnel_length.

from tunnelscope.figures.captions import item_caption


rule tunnel_length_figure:
    """The ID-rule tunnel length against MLP depth and width; per cell and plotted values."""
    input:
        AGGREGATE["metrics"],
    output:
        png=report(
            f"{RESULTS}/tunnel_length/tunnel_length.png",
            caption="../report/tunnel_length.rst",
            category="Tunnel length",
        ),
        pdf=f"{RESULTS}/tunnel_length/tunnel_length.pdf",
        cells=f"{RESULTS}/tunnel_length/tunnel_length_cells.csv",
        summary=f"{RESULTS}/tunnel_length/tunnel_length.csv",
    log:
        f"{RESULTS}/logs/tunnel_length_figure.log",
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.tunnel_length_params(),
        caption=item_caption("tunnel_length/tunnel_length.png"),
    script:
        "../scripts/tunnel_length_figure.py"


rule rank_per_layer_figure:
    """Numerical rank per hidden layer of the MLP cells, with their mean tunnel starts."""
    input:
        metrics=AGGREGATE["metrics"],
        layer_stats=AGGREGATE["layer_stats"],
    output:
        png=report(
            f"{RESULTS}/tunnel_length/rank_per_layer.png",
            caption="../report/rank_per_layer.rst",
            category="Tunnel length",
        ),
        pdf=f"{RESULTS}/tunnel_length/rank_per_layer.pdf",
        table=f"{RESULTS}/tunnel_length/rank_per_layer.csv",
    log:
        f"{RESULTS}/logs/rank_per_layer_figure.log",
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.tunnel_length_params(),
        caption=item_caption("tunnel_length/rank_per_layer.png"),
    script:
        "../scripts/rank_per_layer_figure.py"


rule tunnel_length:
    """Target: the tunnel-length study of the MLP cells (snakemake tunnel_length)."""
    input:
        rules.tunnel_length_figure.output,
        rules.rank_per_layer_figure.output,
