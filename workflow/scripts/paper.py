from pathlib import Path

import pandas as pd

from tunnelscope.figures.paper import build
from tunnelscope.io import read_table
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]):
    i = snakemake.input
    build(
        read_table(i.curves),
        read_table(i.metrics),
        read_table(i.layer_stats),
        pd.read_csv(i.slopes),
        {Path(p).stem: pd.read_csv(p) for p in i.tables},
        snakemake.params.config,
        Path(snakemake.output.page).parent,
        snakemake.params.seeds["confidence"],
    )
