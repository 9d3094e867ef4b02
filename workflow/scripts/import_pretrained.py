from tunnelscope.joblog import job_logging
from tunnelscope.training.backbones import import_pretrained

with job_logging(snakemake.log[0]):
    out = snakemake.output
    import_pretrained(snakemake.params.settings, checkpoint=out.checkpoint, train_log=out.train_log, info_path=out.info)
