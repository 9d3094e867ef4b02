from tunnelscope.figures.paper import curves_by_variable
from tunnelscope.io import read_table
from tunnelscope.joblog import job_logging
from tunnelscope.metrics.health import study_rows

with job_logging(snakemake.log[0]) as log:
    i, out = snakemake.input, snakemake.output
    metrics, left_out = study_rows(read_table(i.metrics), snakemake.params.untrained["include_untrained"])
    if left_out:
        log.warning("left out %d untrained cell(s): %s", len(left_out), ", ".join(left_out))
    curves_by_variable(read_table(i.curves), metrics, out.png, out.pdf, snakemake.params.seeds["confidence"])
