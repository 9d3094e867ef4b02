import pandas as pd

from tunnelscope.figures import tables
from tunnelscope.io import read_table
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    i, name, confidence = snakemake.input, snakemake.wildcards.table, snakemake.params.seeds["confidence"]
    csv, latex = tables.build(
        name, read_table(i.cells), read_table(i.metrics), pd.read_csv(i.means), pd.read_csv(i.paired), confidence
    )
    tables.write(name, csv, latex, snakemake.output.csv, snakemake.output.tex, confidence)
    log.info("%s: %d rows\n%s", name, len(csv), latex.to_string(index=False))
