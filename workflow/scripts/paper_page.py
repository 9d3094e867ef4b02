from tunnelscope.figures.paper import html_page
from tunnelscope.joblog import job_logging

with job_logging(snakemake.log[0]):
    i = snakemake.input
    html_page(
        snakemake.output[0],
        i.overview,
        i.figures,
        i.tables,
        i.slopes,
        i.provenance,
        snakemake.params.seeds["confidence"],
        best_layers=(i.best_layers, snakemake.params.alpha),
    )
