"""One grid-wide table: the per-cell tables concatenated (rule aggregate_table, with the seed
summary beside) or the cells' facts with their training health (rule aggregate_cells)."""

import json

import pandas as pd

from tunnelscope.io import read_csv, read_table, write_table
from tunnelscope.joblog import job_logging
from tunnelscope.metrics.health import training_health
from tunnelscope.metrics.seeds import summarise

with job_logging(snakemake.log[0]) as log:
    out = snakemake.output
    if snakemake.rule == "aggregate_cells":
        cells = []
        for path, train_log in zip(snakemake.input.info, snakemake.input.train_logs):
            with open(path) as fh:
                info = json.load(fh)
            cells.append({**info, **training_health(info, read_csv(train_log), snakemake.params.health)})
        table = pd.DataFrame(cells)
        for setting in ("precision", "channels_last"):  # compute's auto, as each job resolved it
            if setting in table and table[setting].nunique() > 1:
                counts = ", ".join(f"{value} in {n}" for value, n in table[setting].value_counts().items())
                log.warning("compute.%s resolved differently across cells (%s): see cells.csv", setting, counts)
        if not table.trained.all():
            log.warning(
                "%d of %d cells did not train (see trained, untrained_reason)", (~table.trained).sum(), len(table)
            )
    else:
        table = pd.concat([read_table(p) for p in snakemake.input], ignore_index=True)
        name = snakemake.wildcards.table
        write_table(summarise(name, table, snakemake.params.seeds["confidence"]), out.seeds, out.seeds_csv)
    write_table(table, out.table, out.csv)
    log.info("%d rows from %d files", len(table), len(snakemake.input))
