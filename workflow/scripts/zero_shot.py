import numpy as np

from tunnelscope.io import read_table, write_table
from tunnelscope.joblog import job_logging
from tunnelscope.protocols.zero_shot import zero_shot_layers

with job_logging(snakemake.log[0]) as log:
    with np.load(snakemake.input.id_weights) as id_weights, np.load(snakemake.input.shifted_weights) as shifted_weights:
        table = zero_shot_layers(
            read_table(snakemake.input.id_probes),
            id_weights,
            shifted_weights,
            snakemake.input.clean,
            snakemake.input.shifted,
            snakemake.params.settings,
        )
    write_table(table, snakemake.output[0])
    log.info(
        "\n%s",
        table[
            ["layer", "clean_test_acc", "zero_shot_val_acc", "zero_shot_test_acc", "shifted_probe_test_acc"]
        ].to_string(index=False),
    )
