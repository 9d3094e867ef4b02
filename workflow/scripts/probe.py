from tunnelscope.io import write_table
from tunnelscope.joblog import job_logging
from tunnelscope.probe import probe_layers

with job_logging(snakemake.log[0]):
    write_table(probe_layers(snakemake.input[0], snakemake.params.settings), snakemake.output[0])
