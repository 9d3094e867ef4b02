from tunnelscope.io import write_table
from tunnelscope.joblog import job_logging
from tunnelscope.protocols.continual import evaluate
from tunnelscope.runtime import job_device

with job_logging(snakemake.log[0]):
    compute = {**snakemake.params.settings["compute"], "device": snakemake.resources.device}
    job_device(compute, snakemake.resources.get("gpu", 0))
    table = evaluate(
        snakemake.params.settings,
        checkpoint=snakemake.input.checkpoint,
        data_path=snakemake.input.data,
        out_dir=snakemake.output.embeddings,
        batch_size=snakemake.resources.embed_batch,
        threads=snakemake.threads,
        resident_mb=snakemake.resources.resident_mb,
    )
    write_table(table, snakemake.output.evaluation)
