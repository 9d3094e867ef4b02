import os

from tunnelscope.figures.captions import item_caption
from tunnelscope.figures.paper import html_page
from tunnelscope.io import read_table
from tunnelscope.joblog import job_logging
from tunnelscope.metrics.health import health_lines, probe_failure_lines

with job_logging(snakemake.log[0]):
    i, p = snakemake.input, snakemake.params
    relative = [os.path.relpath(path, p.results) for path in i.more]
    html_page(
        snakemake.output[0],
        i.overview,
        i.figures,
        i.tables,
        i.slopes[0] if i.slopes else None,
        i.provenance,
        snakemake.params.seeds["confidence"],
        best_layers=(i.best_layers, snakemake.params.alpha),
        absent=snakemake.params.absent,
        health=health_lines(read_table(i.cells), snakemake.params.untrained["include_untrained"]),
        probe_health=probe_failure_lines(read_table(i.curves)),
        more=[
            (path, name.rsplit(".", 1)[0], item_caption(name, 1 - p.alpha, p.health))
            for path, name in zip(i.more, relative)
        ],
    )
