rule pretrain:
    """Train one cell's backbone on its ID set; checkpoint plus per-epoch log."""
    input:
        data=lambda wc: f"{RESULTS}/prepared/{STUDY.cells[wc.cell].id_dataset}/r{STUDY.cells[wc.cell].resolution}.npz",
    output:
        checkpoint=f"{RESULTS}/cells/{{cell}}/checkpoint.safetensors",
        train_log=f"{RESULTS}/cells/{{cell}}/train_log.csv",
        info=f"{RESULTS}/cells/{{cell}}/cell.json",
    params:
        settings=lambda wc: STUDY.pretrain_params(wc.cell),
        # Resume state outside the outputs, so Snakemake keeps it when a job is killed.
        state=lambda wc: f"{RESULTS}/cells/{wc.cell}/train_state.pt",
    threads: 2
    resources:
        channels_last=lambda wc: int(STUDY.config["compute"]["channels_last"]),
    log:
        "logs/pretrain/{cell}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/{{cell}}.tsv"
    conda:
        ENV
    script:
        "../scripts/pretrain.py"
