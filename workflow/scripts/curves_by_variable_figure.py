from tunnelscope.figures.paper import curves_by_variable
from tunnelscope.io import read_table
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]):
    i, out = snakemake.input, snakemake.output
    curves_by_variable(
        read_table(i.curves), read_table(i.metrics), out.png, out.pdf, snakemake.params.seeds["confidence"]
    )
