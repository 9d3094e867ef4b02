from tunnelscope.analysis.tunnel_length import cell_table, rank_table
from tunnelscope.figures.tunnel_length import rank_figure
from tunnelscope.io import read_table, write_csv
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]):
    i, out, settings = snakemake.input, snakemake.output, snakemake.params.settings
    # The tunnel starts drawn on the rank curves, from the metrics as in tunnel_length_figure.
    cells = cell_table(read_table(i.metrics), settings["threshold"])
    ranks = rank_table(read_table(i.layer_stats), cells, settings["confidence"])
    write_csv(ranks, out.table)
    rank_figure(ranks, settings["confidence"], out.png, out.pdf)
