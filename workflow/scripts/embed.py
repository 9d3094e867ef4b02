from tunnelscope.features.embed import embed_eval_set
from tunnelscope.joblog import job_logging
from tunnelscope.runtime import JobRuntime

with job_logging(snakemake.log[0]):
    embed_eval_set(
        snakemake.params.settings,
        backbone=snakemake.input.checkpoint,
        store=snakemake.input.data,
        out_dir=snakemake.output[0],
        runtime=JobRuntime.of_job(snakemake),
    )
