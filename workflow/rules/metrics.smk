rule cell_metrics:
    """Tunnel metrics of one cell against each of its OOD sets, and its training health."""
    input:
        probes=probe_tables,
        predictions=probe_predictions,
        info=rules.pretrain.output.info,
        train_log=rules.pretrain.output.train_log,
    output:
        PATHS.path("cell_metrics"),
    log:
        PATHS.log("cell_metrics"),
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.metrics_params(wc.cell),
        health=lambda wc: STUDY.health_params(),
    script:
        "../scripts/cell_metrics.py"


rule best_layers:
    """Per cell and OOD set: the best layer with its interval, the layers indistinguishable from
    it, the validation-chosen layer and the last layer's gap, on the probes' predictions."""
    input:
        probes=probe_tables,
        predictions=probe_predictions,
        info=rules.pretrain.output.info,
        train_log=rules.pretrain.output.train_log,
    output:
        PATHS.path("best_layers"),
    log:
        PATHS.log("best_layers"),
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.best_layers_params(wc.cell),
        health=lambda wc: STUDY.health_params(),
    script:
        "../scripts/best_layers.py"
