from tunnelscope.figures.paper import html_page
from tunnelscope.io import read_table
from tunnelscope.joblog import job_logging
from tunnelscope.metrics.health import health_lines, probe_failure_lines

with job_logging(snakemake.log[0]):
    i, p = snakemake.input, snakemake.params
    html_page(
        snakemake.output[0],
        i.overview,
        i.figures,
        i.tables,
        i.slopes[0] if i.slopes else None,
        i.provenance,
        p.seeds["confidence"],
        best_layers=(i.best_layers, p.alpha),
        absent=p.absent,
        health=health_lines(read_table(i.cells), p.untrained["include_untrained"]),
        probe_health=probe_failure_lines(read_table(i.curves)),
        # the report's other items, with the captions its caption files render (common.page_captions)
        more=[(path, title, caption) for path, (title, caption) in zip(i.more, p.captions)],
    )
