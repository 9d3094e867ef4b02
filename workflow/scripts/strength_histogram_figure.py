from tunnelscope.figures.paper import strength_histogram
from tunnelscope.io import read_table
from tunnelscope.joblog import job_logging
from tunnelscope.metrics.health import study_rows

with job_logging(snakemake.log[0]) as log:
    metrics, left_out = study_rows(read_table(snakemake.input[0]), snakemake.params.untrained["include_untrained"])
    if left_out:
        log.warning("left out %d untrained cell(s): %s", len(left_out), ", ".join(left_out))
    strength_histogram(metrics, snakemake.output.png, snakemake.output.pdf)
