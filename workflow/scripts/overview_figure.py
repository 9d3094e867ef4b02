from tunnelscope.figures.plots import overview_figure
from tunnelscope.io import read_table
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]):
    overview_figure(
        read_table(snakemake.input[0]), snakemake.output.png, snakemake.output.pdf, snakemake.params.seeds["confidence"]
    )
