from tunnelscope.figures import tables
from tunnelscope.io import read_csv, read_table
from tunnelscope.joblog import job_logging
from tunnelscope.metrics.health import study_rows

with job_logging(snakemake.log[0]) as log:
    i, name, confidence = snakemake.input, snakemake.wildcards.table, snakemake.params.seeds["confidence"]
    # The per-OOD-set tables leave untrained cells out (params.untrained); the analysis tables
    # come from the analysis, which already did.
    untrained = snakemake.params.untrained
    metrics, left_out = study_rows(read_table(i.metrics), untrained.get("include_untrained", True))
    if left_out:
        log.warning("left out %d untrained cell(s): %s", len(left_out), ", ".join(left_out))
    means, paired = (read_csv(i.means), read_csv(i.paired)) if i.get("means") else (None, None)
    csv, latex = tables.build(name, read_table(i.cells), metrics, means, paired, confidence)
    tables.write(name, csv, latex, snakemake.output.csv, snakemake.output.tex, confidence)
    log.info("%s: %d rows\n%s", name, len(csv), latex.to_string(index=False))
