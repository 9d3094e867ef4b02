rule prepare:
    """Render or load one dataset at one resolution into the prepared-image cache."""
    output:
        f"{RESULTS}/prepared/{{dataset}}/r{{res}}.npz",
    params:
        settings=lambda wc: STUDY.prepare_params(wc.dataset, int(wc.res)),
    threads: 2
    log:
        "logs/prepare/{dataset}_r{res}.log",
    conda:
        ENV
    script:
        "../scripts/prepare.py"
