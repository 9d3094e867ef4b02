rule prepare:
    """Render or load one dataset through one eval transform (resolution, and for published
    models their interpolation and crop) into the prepared-image cache."""
    output:
        directory(PATHS.path("prepared")),
    log:
        PATHS.log("prepare"),
    benchmark:
        PATHS.benchmark("prepare")
    conda:
        ENV
    threads: HEAVY_THREADS
    params:
        settings=lambda wc: STUDY.prepare_params(wc.dataset, wc.transform),
    script:
        "../scripts/prepare.py"
