import pandas as pd

from tunnelscope.figures.captions import ZERO_SHOT_CAPTION
from tunnelscope.figures.plots import zero_shot_figure
from tunnelscope.figures.tables import write, zero_shot_table
from tunnelscope.io import read_table, write_table
from tunnelscope.joblog import job_logging
from tunnelscope.metrics.seeds import several_seeds
from tunnelscope.protocols.zero_shot import zero_shot_seeds, zero_shot_summary

with job_logging(snakemake.log[0]) as log:
    layers = pd.concat([read_table(p) for p in snakemake.input], ignore_index=True)
    out, confidence = snakemake.output, snakemake.params.seeds["confidence"]
    write_table(layers, out.layers, out.layers_csv)
    summary = zero_shot_summary(layers)
    by_backbone, by_layer = zero_shot_seeds(summary, layers, confidence) if several_seeds(summary) else (None, None)
    csv, latex = zero_shot_table(summary, by_backbone)
    write("zero_shot", csv, latex, out.csv, out.tex, confidence, caption=ZERO_SHOT_CAPTION)
    zero_shot_figure(layers, summary, out.png, out.pdf, by_layer)
    log.info("\n%s", csv.to_string(index=False))
