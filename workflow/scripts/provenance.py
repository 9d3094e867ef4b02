from tunnelscope.figures.paper import write_provenance
from tunnelscope.io import read_table
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]):
    write_provenance(
        read_table(snakemake.input.metrics),
        snakemake.params.config,
        snakemake.output[0],
        read_table(snakemake.input.cells),
    )
