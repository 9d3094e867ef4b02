import json

from tunnelscope.io import write_table
from tunnelscope.joblog import job_logging
from tunnelscope.probe.job import probe_layers, write_weights
from tunnelscope.runtime import device_info, job_device

with job_logging(snakemake.log[0]):
    # A probe's params hold no compute settings: its rule passes them as resources.
    compute = {"device": snakemake.resources.device, "deterministic": bool(snakemake.resources.deterministic)}
    device = job_device(compute, snakemake.resources.get("gpu", 0))
    with open(snakemake.input.info) as fh:
        family = json.load(fh)["family"]
    table, weights, predictions = probe_layers(
        snakemake.input.embeddings[0], snakemake.params.settings, family, threads=snakemake.threads
    )
    write_weights(weights, snakemake.output.weights)
    write_table(predictions, snakemake.output.predictions)
    table.attrs["device"] = device_info(device)  # in the Parquet file's metadata, not its rows
    write_table(table, snakemake.output.table)
