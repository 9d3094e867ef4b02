from tunnelscope.joblog import job_logging
from tunnelscope.protocols.continual import swap
from tunnelscope.registry import TRAINED

with job_logging(snakemake.log[0]):
    i, out = snakemake.input, snakemake.output
    swap(
        snakemake.params.settings,
        dict(zip(TRAINED, i.networks)),
        dict(zip(TRAINED, i.evaluations)),
        out.tunnel,
        {"E1+T2": out.e1t2, "E2+T1": out.e2t1},
    )
