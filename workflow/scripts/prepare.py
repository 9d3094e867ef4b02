from tunnelscope.data.prepare import prepare
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    s = snakemake.params.settings
    transform = {k: s[k] for k in ("interpolation", "crop_pct", "native") if k in s}
    store = prepare(
        s["dataset"], s["spec"], s["resolution"], snakemake.output[0], threads=snakemake.threads, **transform
    )
    log.info(
        "%s at %dpx: %s",
        s["dataset"],
        s["resolution"],
        {k: f"{len(v)} images, {v.nbytes / 2**20:.1f} MB" for k, v in store.splits.items()},
    )
