from tunnelscope.data.store import Store
from tunnelscope.joblog import job_logging
from tunnelscope.training.loop import pretrain

with job_logging(snakemake.log[0]):
    out = snakemake.output
    pretrain(
        snakemake.params.settings,
        Store(snakemake.input.data),
        checkpoint=out.checkpoint,
        train_log=out.train_log,
        info_path=out.info,
        state_path=snakemake.params.state,
        threads=snakemake.threads,
        channels_last=bool(snakemake.resources.channels_last),
        resident_mb=snakemake.resources.resident_mb,
        init_checkpoint=snakemake.input.init[0] if snakemake.input.init else None,
    )
