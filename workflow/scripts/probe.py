import json

from tunnelscope.io import write_table
from tunnelscope.joblog import job_logging
from tunnelscope.probe.layers import probe_layers, write_weights

with job_logging(snakemake.log[0]):
    with open(snakemake.input.info) as fh:
        family = json.load(fh)["family"]
    table, weights, predictions = probe_layers(
        snakemake.input.embeddings[0], snakemake.params.settings, family, threads=snakemake.threads
    )
    write_weights(weights, snakemake.output.weights)
    write_table(predictions, snakemake.output.predictions)
    write_table(table, snakemake.output.table)
