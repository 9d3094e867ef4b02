rule prepare:
    """Render or load one dataset through one eval transform (resolution, and for published
    models their interpolation and crop) into the prepared-image cache."""
    output:
        directory(f"{RESULTS}/prepared/{{dataset}}/{{transform}}"),
    log:
        f"{RESULTS}/logs/prepare/{{dataset}}_{{transform}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare/{{dataset}}/{{transform}}.tsv"
    conda:
        ENV
    threads: HEAVY_THREADS
    params:
        settings=lambda wc: STUDY.prepare_params(wc.dataset, wc.transform),
    script:
        "../scripts/prepare.py"
