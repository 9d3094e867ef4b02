from tunnelscope.io import write_table
from tunnelscope.joblog import job_logging
from tunnelscope.metrics.tsne import tsne_layers

with job_logging(snakemake.log[0]) as log:
    coords = tsne_layers(snakemake.input.embeddings, snakemake.params.settings)
    write_table(coords, snakemake.output.coords)
    log.info("%d layers, %d images each", coords.layer.nunique(), (coords.layer == coords.layer.iloc[0]).sum())
