import pandas as pd

from tunnelscope.joblog import job_logging
from tunnelscope.paper import shap_bars

with job_logging(snakemake.log[0]):
    shap_bars(pd.read_csv(snakemake.input[0]), snakemake.output.png, snakemake.output.pdf)
