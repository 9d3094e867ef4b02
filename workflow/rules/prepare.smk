rule prepare:
    """Render or load one dataset through one eval transform (resolution, and for published
    models their interpolation and crop) into the prepared-image cache."""
    output:
        directory(f"{RESULTS}/prepared/{{dataset}}/{{transform}}"),
    params:
        settings=lambda wc: STUDY.prepare_params(wc.dataset, wc.transform),
    threads: HEAVY_THREADS
    log:
        "logs/prepare/{dataset}_{transform}.log",
    conda:
        ENV
    script:
        "../scripts/prepare.py"
