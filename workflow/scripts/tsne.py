from tunnelscope.figures.plots import tsne_figure
from tunnelscope.io import read_table, write_table
from tunnelscope.joblog import job_logging
from tunnelscope.metrics.tsne import tsne_layers

with job_logging(snakemake.log[0]) as log:
    coords = tsne_layers(snakemake.input.embeddings, snakemake.params.settings)
    write_table(coords, snakemake.output.coords)
    tsne_figure(coords, read_table(snakemake.input.layer_stats), snakemake.params.title, snakemake.output.png, snakemake.output.pdf)
    log.info("%d layers, %d images each", coords.layer.nunique(), (coords.layer == coords.layer.iloc[0]).sum())
