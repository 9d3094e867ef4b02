"""One grid-wide table: the per-cell tables concatenated (rule aggregate_table, with the seed
summary beside) or the cells' facts (rule aggregate_cells)."""

import json

import pandas as pd

from tunnelscope.io import read_table, write_table
from tunnelscope.joblog import job_logging
from tunnelscope.metrics.seeds import summarise

with job_logging(snakemake.log[0]) as log:
    out = snakemake.output
    if snakemake.rule == "aggregate_cells":
        cells = []
        for path in snakemake.input:
            with open(path) as fh:
                cells.append(json.load(fh))
        table = pd.DataFrame(cells)
    else:
        table = pd.concat([read_table(p) for p in snakemake.input], ignore_index=True)
        name = snakemake.wildcards.table
        write_table(summarise(name, table, snakemake.params.seeds["confidence"]), out.seeds, out.seeds_csv)
    write_table(table, out.table, out.csv)
    log.info("%d rows from %d files", len(table), len(snakemake.input))
