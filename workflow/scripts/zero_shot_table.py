import pandas as pd

from tunnelscope.captions import ZERO_SHOT_CAPTION
from tunnelscope.io import read_table, write_table
from tunnelscope.joblog import job_logging
from tunnelscope.plots import zero_shot_figure
from tunnelscope.protocols import zero_shot_summary
from tunnelscope.tables import zero_shot_table, write

with job_logging(snakemake.log[0]) as log:
    layers = pd.concat([read_table(p) for p in snakemake.input], ignore_index=True)
    out = snakemake.output
    write_table(layers, out.layers, out.layers_csv)
    summary = zero_shot_summary(layers)
    csv, latex = zero_shot_table(summary)
    write("zero_shot", csv, latex, out.csv, out.tex, caption=ZERO_SHOT_CAPTION)
    zero_shot_figure(layers, summary, out.png, out.pdf)
    log.info("\n%s", csv.to_string(index=False))
