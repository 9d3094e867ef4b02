import json

from tunnelscope.data.store import Store
from tunnelscope.joblog import job_logging
from tunnelscope.protocols.continual import frozen_modules
from tunnelscope.training.loop import pretrain

with job_logging(snakemake.log[0]):
    params, out = snakemake.params.settings, snakemake.output
    with open(snakemake.input.tunnel) as fh:
        tunnel = json.load(fh)
    pretrain(
        params,
        Store(snakemake.input.data),
        checkpoint=out.checkpoint,
        train_log=out.train_log,
        info_path=out.info,
        state_path=snakemake.params.state,
        threads=snakemake.threads,
        channels_last=bool(snakemake.resources.channels_last),
        resident_mb=snakemake.resources.resident_mb,
        init_checkpoint=snakemake.input.start,
        frozen=frozen_modules(tunnel, params["finetune"]["train"]),
        freeze_norm_stats=params["finetune"]["freeze_norm_stats"],
    )
