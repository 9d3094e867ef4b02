import pandas as pd

from tunnelscope.figures.plots import cell_figure
from tunnelscope.io import read_table
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]):
    probes = pd.concat([read_table(p) for p in snakemake.input], ignore_index=True)
    cell_figure(probes, snakemake.params.title, snakemake.output.png, snakemake.output.pdf, snakemake.params.confidence)
