"""Train one backbone: a cell's (rule pretrain), a continual task's (continual_train, from the
optional ``input.init``) or a fine-tuning (continual_finetune, from ``input.init`` with the modules
outside ``params.settings["finetune"]["train"]`` frozen at the ``input.tunnel`` split)."""

import json

from tunnelscope.data.store import ImageStore
from tunnelscope.joblog import job_logging
from tunnelscope.runtime import JobRuntime
from tunnelscope.training.loop import pretrain


def init_checkpoint(inputs) -> str | None:
    init = inputs.get("init")  # a path, or a list that is empty for a task trained from scratch
    if isinstance(init, str):
        return init
    return init[0] if init else None


def frozen(inputs, params: dict) -> dict:
    if "tunnel" not in inputs.keys():
        return {}
    from tunnelscope.protocols.continual import frozen_modules  # only fine-tuning needs it

    with open(inputs.tunnel) as fh:
        tunnel = json.load(fh)
    finetune = params["finetune"]
    return {"frozen": frozen_modules(tunnel, finetune["train"]), "freeze_norm_stats": finetune["freeze_norm_stats"]}


with job_logging(snakemake.log[0]):
    params, out = snakemake.params.settings, snakemake.output
    pretrain(
        params,
        ImageStore(snakemake.input.data),
        checkpoint=out.checkpoint,
        train_log=out.train_log,
        info_path=out.info,
        state_path=snakemake.params.state,
        runtime=JobRuntime.of_job(snakemake),
        init_checkpoint=init_checkpoint(snakemake.input),
        **frozen(snakemake.input, params),
    )
