rule pretrain:
    """Train one cell's backbone on its ID set; checkpoint plus per-epoch log."""
    input:
        data=lambda wc: STUDY.prepared_path(STUDY.cells[wc.cell].id_dataset, wc.cell),
    output:
        checkpoint=PATHS.path("checkpoint"),
        train_log=PATHS.path("train_log"),
        info=PATHS.path("cell_info"),
    log:
        PATHS.log("pretrain"),
    benchmark:
        PATHS.benchmark("pretrain")
    wildcard_constraints:
        cell=cell_pattern(STUDY.trained_cells()),
    conda:
        ENV
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_PER_JOB,
        device=DEVICE,
        # Splits up to this size stay on the device; a speed knob (the same crops either way).
        resident_mb=lambda wc: STUDY.config["compute"]["resident_mb"],
    params:
        settings=lambda wc: STUDY.pretrain_params(wc.cell),
        # Resume state outside the outputs, so Snakemake keeps it when a job is killed.
        state=lambda wc: PATHS.path("train_state", cell=wc.cell),
    script:
        "../scripts/pretrain.py"


rule import_pretrained:
    """A published backbone instead of pretraining: its weights, checked against the architecture."""
    input:
        # A weights file is an input, so replacing it reruns the cell.
        weights=lambda wc: (
            [STUDY.cells[wc.cell].pretrained["weights"]] if STUDY.cells[wc.cell].pretrained.get("weights") else []
        ),
    output:
        checkpoint=PATHS.path("checkpoint"),
        train_log=PATHS.path("train_log"),
        info=PATHS.path("cell_info"),
    log:
        PATHS.log("import_pretrained"),
    wildcard_constraints:
        cell=cell_pattern(STUDY.pretrained_cells()),
    conda:
        ENV
    threads: 1
    params:
        settings=lambda wc: STUDY.import_params(wc.cell),
    script:
        "../scripts/import_pretrained.py"
