"""The cells' best layers in one table (aggregate/best_layers) and its readable summary."""

import pandas as pd

from tunnelscope.figures.best_layers import summary_table
from tunnelscope.io import read_table, write_csv, write_table
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    out = snakemake.output
    table = pd.concat([read_table(p) for p in snakemake.input], ignore_index=True)
    write_table(table, out.table, out.csv)
    summary = summary_table(table)
    write_csv(summary, out.summary)
    log.info("\n%s", summary.to_string(index=False))
