import json

from tunnelscope.io import write_table
from tunnelscope.joblog import job_logging
from tunnelscope.probe.job import probe_layers, write_weights
from tunnelscope.runtime import JobRuntime, device_info

with job_logging(snakemake.log[0]):
    # A probe's params hold no compute settings: its rule passes them as resources.
    runtime = JobRuntime.of_job(snakemake)
    device = runtime.start({"deterministic": bool(snakemake.resources.deterministic)})
    with open(snakemake.input.info) as fh:
        family = json.load(fh)["family"]
    table, weights, predictions = probe_layers(
        snakemake.input.embeddings[0], snakemake.params.settings, family, runtime=runtime
    )
    write_weights(weights, snakemake.output.weights)
    write_table(predictions, snakemake.output.predictions)
    table.attrs["device"] = device_info(device)  # in the Parquet file's metadata, not its rows
    write_table(table, snakemake.output.table)
