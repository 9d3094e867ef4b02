from tunnelscope.joblog import job_logging
from tunnelscope.paper import html_page

with job_logging(snakemake.log[0]):
    i = snakemake.input
    html_page(snakemake.output[0], i.overview, i.figures, i.tables, i.slopes, i.provenance, snakemake.params.seeds["confidence"])
