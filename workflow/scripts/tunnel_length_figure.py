from tunnelscope.analysis.tunnel_length import cell_table, summary_table
from tunnelscope.figures.tunnel_length import tunnel_length_figure
from tunnelscope.io import read_table, write_csv
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    out, settings = snakemake.output, snakemake.params.settings
    cells = cell_table(read_table(snakemake.input[0]), settings["threshold"])
    summary = summary_table(cells, settings["confidence"])
    write_csv(cells, out.cells)
    write_csv(summary, out.summary)
    tunnel_length_figure(summary, settings["confidence"], out.png, out.pdf)
    log.info("%d MLP cells\n%s", len(cells), cells.to_string(index=False))
