from tunnelscope.figures.best_layers import best_layers_figure
from tunnelscope.io import read_table
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]):
    i = snakemake.input
    best_layers_figure(read_table(i.best), read_table(i.curves), snakemake.output.png, snakemake.output.pdf)
