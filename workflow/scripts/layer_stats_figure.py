from tunnelscope.figures.paper import layer_stats_figure
from tunnelscope.io import read_table
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]):
    out = snakemake.output
    layer_stats_figure(read_table(snakemake.input[0]), out.png, out.pdf, snakemake.params.seeds["confidence"])
