from pathlib import Path

from tunnelscope.analysis.comparisons import analyze
from tunnelscope.io import read_table
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]):
    analyze(read_table(snakemake.input[0]), Path(snakemake.output.slopes).parent, snakemake.params.settings)
