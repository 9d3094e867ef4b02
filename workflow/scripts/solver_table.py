import pandas as pd

from tunnelscope.figures.captions import SOLVERS_CAPTION
from tunnelscope.figures.plots import solver_figure
from tunnelscope.figures.tables import solver_table, write
from tunnelscope.io import read_table, write_table
from tunnelscope.joblog import job_logging
from tunnelscope.protocols.solver_comparison import solver_comparison

with job_logging(snakemake.log[0]) as log:
    metrics = pd.concat([read_table(p) for p in snakemake.input], ignore_index=True)
    out, reference, confidence = snakemake.output, snakemake.params.reference, snakemake.params.seeds["confidence"]
    write_table(metrics, out.metrics, out.metrics_csv)
    csv, latex = solver_table(solver_comparison(metrics, reference, confidence))
    write("solvers", csv, latex, out.csv, out.tex, confidence, caption=SOLVERS_CAPTION)
    solver_figure(metrics, reference, out.png, out.pdf)
    log.info("\n%s", csv.to_string(index=False))
