import json

import pandas as pd

from tunnelscope.io import read_table, write_table
from tunnelscope.joblog import job_logging
from tunnelscope.metrics.seeds import summarise

with job_logging(snakemake.log[0]) as log:
    out = snakemake.output
    confidence = snakemake.params.seeds["confidence"]
    tables = {
        "curves": pd.concat([read_table(p) for p in snakemake.input.probes], ignore_index=True),
        "metrics": pd.concat([read_table(p) for p in snakemake.input.metrics], ignore_index=True),
        "layer_stats": pd.concat([read_table(p) for p in snakemake.input.layer_stats], ignore_index=True),
    }
    for name, table in tables.items():
        write_table(table, out[name], out[f"{name}_csv"])
        write_table(summarise(name, table, confidence), out[f"{name}_seeds"], out[f"{name}_seeds_csv"])
    cells = []
    for path in snakemake.input.info:
        with open(path) as fh:
            cells.append(json.load(fh))
    write_table(pd.DataFrame(cells), out.cells, out.cells_csv)
    log.info("%d cells, %d curve rows, %d metric rows", len(cells), len(tables["curves"]), len(tables["metrics"]))
