from tunnelscope.features.embed import embed_eval_set
from tunnelscope.joblog import job_logging
from tunnelscope.runtime import job_device

with job_logging(snakemake.log[0]):
    compute = {**snakemake.params.settings["compute"], "device": snakemake.resources.device}
    job_device(compute, snakemake.resources.get("gpu", 0))
    embed_eval_set(
        snakemake.params.settings,
        checkpoint=snakemake.input.checkpoint,
        data_path=snakemake.input.data,
        out_dir=snakemake.output[0],
        batch_size=snakemake.resources.embed_batch,
        threads=snakemake.threads,
        resident_mb=snakemake.resources.resident_mb,
    )
