"""One cell's tunnel metrics from its probe tables: under its first solver (rule cell_metrics) or
under each of its solvers (rule solver_metrics)."""

import json

import pandas as pd

from tunnelscope.io import read_table, write_table
from tunnelscope.joblog import job_logging
from tunnelscope.metrics.tunnel import cell_metrics
from tunnelscope.probe.predictions import read_predictions
from tunnelscope.protocols.solvers import solver_metrics

BY_SOLVER = snakemake.rule == "solver_metrics"

with job_logging(snakemake.log[0]) as log:
    probes = pd.concat([read_table(p) for p in snakemake.input.probes], ignore_index=True)
    with open(snakemake.input.info) as fh:
        info = json.load(fh)
    predictions = read_predictions(snakemake.input.predictions)
    if BY_SOLVER:
        table = solver_metrics(probes, info, snakemake.params.settings, predictions)
    else:
        table = cell_metrics(probes, info, snakemake.params.settings, {e: p for (_, e), p in predictions.items()})
    write_table(table, snakemake.output[0])
    shown = ["solver", "ood_set", "tunnel_start"] if BY_SOLVER else ["ood_set", "tunnel", "ood_best_layer"]
    log.info("\n%s", table[[*shown, "ood_retained", "pearson", "alignment"]].to_string(index=False))
