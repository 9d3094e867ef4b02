import json

import pandas as pd

from tunnelscope.io import read_table, write_table
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    out = snakemake.output
    curves = pd.concat([read_table(p) for p in snakemake.input.probes], ignore_index=True)
    metrics = pd.concat([read_table(p) for p in snakemake.input.metrics], ignore_index=True)
    cells = []
    for path in snakemake.input.info:
        with open(path) as fh:
            cells.append(json.load(fh))
    write_table(curves, out.curves, out.curves_csv)
    write_table(metrics, out.metrics, out.metrics_csv)
    write_table(pd.DataFrame(cells), out.cells, out.cells_csv)
    layer_stats = pd.concat([read_table(p) for p in snakemake.input.layer_stats], ignore_index=True)
    write_table(layer_stats, out.layer_stats, out.layer_stats_csv)
    log.info("%d cells, %d curve rows, %d metric rows", len(cells), len(curves), len(metrics))
