import json
from pathlib import Path

from tunnelscope.figures import tables
from tunnelscope.figures.continual import continual_figure
from tunnelscope.io import read_table, write_csv
from tunnelscope.joblog import job_logging
from tunnelscope.protocols import continual
from tunnelscope.registry import CELL_VARIABLES

with job_logging(snakemake.log[0]) as log:
    i, out, params = snakemake.input, snakemake.output, snakemake.params.settings
    evaluations = [read_table(path) for path in i.evaluations]
    tunnels = {}
    for path in i.tunnels:  # RESULTS/continual/RUN/tunnel.json
        with open(path) as fh:
            tunnels[Path(path).parent.name] = json.load(fh)
    run_of = {tuple(variables[k] for k in CELL_VARIABLES): run for run, variables in params["runs"].items()}
    scores = continual.scores(evaluations, tunnels, run_of)
    write_csv(scores, out.scores)
    confidence = snakemake.params.seeds["confidence"]
    csv, latex = tables.continual_table(scores, [label for _, label in params["networks"]], params["score"], confidence)
    tables.write("continual", csv, latex, out.csv, out.tex, confidence, caption=snakemake.params.caption)
    continual_figure(evaluations, tunnels, run_of, out.png, out.pdf)
    log.info("Table 2 (%s scores)\n%s", params["score"], latex.to_string(index=False))
