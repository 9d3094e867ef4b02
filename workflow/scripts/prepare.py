from tunnelscope import datasets
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    s = snakemake.params.settings
    transform = {k: s[k] for k in ("interpolation", "crop_pct", "native") if k in s}
    data = datasets.prepare(s["dataset"], s["spec"], s["resolution"], threads=snakemake.threads, **transform)
    datasets.save(data, snakemake.output[0])
    log.info("%s at %dpx: %s", s["dataset"], s["resolution"], {k: len(v) for k, v in data.splits.items()})
