"""One cell's best layers (metrics.best_layers) from its probe and predictions tables, with the
cell's training health (an answer about a backbone that did not learn is marked as such)."""

import json

import pandas as pd

from tunnelscope.io import read_csv, read_table, write_table
from tunnelscope.joblog import job_logging
from tunnelscope.metrics.best_layers import best_layers
from tunnelscope.metrics.health import training_health
from tunnelscope.probe.predictions import read_predictions

with job_logging(snakemake.log[0]) as log:
    tables = [read_table(p) for p in snakemake.input.probes]
    probes = pd.concat(tables, ignore_index=True)
    predictions = {e: p for (_, e), p in read_predictions(snakemake.input.predictions, tables).items()}
    with open(snakemake.input.info) as fh:
        info = json.load(fh)
    table = best_layers(probes, predictions, info, snakemake.params.settings)
    table = table.assign(**training_health(info, read_csv(snakemake.input.train_log), snakemake.params.health))
    write_table(table, snakemake.output[0])
    shown = ["ood_set", "best_layer", "best_acc", "n_indistinguishable", "val_chosen_layer", "gap_best_last", "tunnel"]
    log.info("\n%s", table[shown].to_string(index=False))
