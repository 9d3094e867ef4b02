from tunnelscope.io import write_table
from tunnelscope.joblog import job_logging
from tunnelscope.protocols.continual import evaluate
from tunnelscope.runtime import JobRuntime

with job_logging(snakemake.log[0]):
    table = evaluate(
        snakemake.params.settings,
        checkpoint=snakemake.input.checkpoint,
        data_path=snakemake.input.data,
        out_dir=snakemake.output.embeddings,
        runtime=JobRuntime.of_job(snakemake),
    )
    write_table(table, snakemake.output.evaluation)
