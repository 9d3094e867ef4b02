"""One cell's tunnel metrics from its probe tables: under its first solver (rule cell_metrics) or
under each of its solvers (rule solver_metrics). The cell_metrics rows also carry the cell's
training health (``trained``, ``untrained_reason``; metrics.health), warned here when false, and
the layers whose probes failed (``failed_layers``: missing in the metrics), warned too."""

import json

import pandas as pd

from tunnelscope.io import read_csv, read_table, write_table
from tunnelscope.joblog import job_logging
from tunnelscope.metrics.health import training_health
from tunnelscope.metrics.tunnel import cell_metrics
from tunnelscope.probe.predictions import read_predictions
from tunnelscope.protocols.solver_comparison import solver_metrics

BY_SOLVER = snakemake.rule == "solver_metrics"

with job_logging(snakemake.log[0]) as log:
    tables = [read_table(p) for p in snakemake.input.probes]
    probes = pd.concat(tables, ignore_index=True)
    with open(snakemake.input.info) as fh:
        info = json.load(fh)
    predictions = read_predictions(snakemake.input.predictions, tables)
    if BY_SOLVER:
        table = solver_metrics(probes, info, snakemake.params.settings, predictions)
    else:
        table = cell_metrics(probes, info, snakemake.params.settings, {e: p for (_, e), p in predictions.items()})
        health = training_health(info, read_csv(snakemake.input.train_log), snakemake.params.health)
        table = table.assign(**health)
        if not health["trained"]:
            log.warning(
                "%s did not train (%s): left out of the study-level analysis unless analysis.include_untrained",
                snakemake.wildcards.cell,
                health["untrained_reason"],
            )
    for row in table[table.n_failed_layers > 0].itertuples():
        log.warning(
            "%s, %s: %d failed probes (layers %s) are missing; the metrics use the other layers",
            snakemake.wildcards.cell,
            row.ood_set,
            row.n_failed_layers,
            row.failed_layers,
        )
    write_table(table, snakemake.output[0])
    shown = ["solver", "ood_set", "tunnel_start"] if BY_SOLVER else ["ood_set", "tunnel", "ood_best_layer"]
    log.info("\n%s", table[[*shown, "ood_retained", "pearson", "alignment"]].to_string(index=False))
