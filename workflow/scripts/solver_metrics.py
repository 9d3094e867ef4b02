import json

import pandas as pd

from tunnelscope.io import read_table, write_table
from tunnelscope.joblog import job_logging
from tunnelscope.protocols.solvers import solver_metrics

with job_logging(snakemake.log[0]) as log:
    probes = pd.concat([read_table(p) for p in snakemake.input.probes], ignore_index=True)
    with open(snakemake.input.info) as fh:
        info = json.load(fh)
    table = solver_metrics(probes, info, snakemake.params.settings)
    write_table(table, snakemake.output[0])
    log.info("\n%s", table[["solver", "ood_set", "tunnel_start", "ood_retained", "pearson", "alignment"]].to_string(index=False))
