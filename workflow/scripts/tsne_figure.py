from tunnelscope.figures.plots import tsne_figure
from tunnelscope.io import read_table
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]):
    coords, stats = read_table(snakemake.input.coords), read_table(snakemake.input.layer_stats)
    tsne_figure(coords, stats, snakemake.params.title, snakemake.output.png, snakemake.output.pdf)
