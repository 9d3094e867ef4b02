from tunnelscope.io import write_table
from tunnelscope.joblog import job_logging
from tunnelscope.metrics.layer_stats import embed_dir_stats

with job_logging(snakemake.log[0]) as log:
    table = embed_dir_stats(snakemake.input[0], snakemake.params.settings)
    write_table(table, snakemake.output[0])
    log.info("\n%s", table.to_string(index=False))
