from tunnelscope.figures.paper import strength_histogram
from tunnelscope.io import read_table
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]):
    strength_histogram(read_table(snakemake.input[0]), snakemake.output.png, snakemake.output.pdf)
