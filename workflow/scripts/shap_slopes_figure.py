from tunnelscope.figures.paper import shap_bars
from tunnelscope.io import read_csv
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]):
    shap_bars(read_csv(snakemake.input[0]), snakemake.output.png, snakemake.output.pdf)
