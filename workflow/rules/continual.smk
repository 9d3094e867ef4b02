# Continual learning (the paper's Table 2): per run, task 1 -> E1+T1, then task 2 -> E2+T2; the
# tunnel located on their ID curves; E1+T2 and E2+T1 by swapping; the finetune configurations;
# every configuration scored on both tasks; the table. Target: snakemake continual. Its runs,
# networks and paths are in common.smk.
from tunnelscope.figures.captions import CONTINUAL_TABLE, item_caption


rule continual_train:
    """Task 1 from scratch (E1+T1), or task 2 from the E1+T1 weights (E2+T2)."""
    input:
        data=lambda wc: STUDY.run_prepared_path(wc.run),
        init=lambda wc: ([network_checkpoint(wc.run, TASK_NETWORKS[0])] if wc.network == TASK_NETWORKS[1] else []),
    output:
        checkpoint=PATHS.path("continual_checkpoint"),
        train_log=PATHS.path("continual_train_log"),
        info=PATHS.path("continual_info"),
    log:
        PATHS.log("continual_train"),
    benchmark:
        PATHS.benchmark("continual_train")
    wildcard_constraints:
        run=cell_pattern(RUNS),
        network=cell_pattern(TASK_NETWORKS),
    conda:
        ENV
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_PER_JOB,
        device=DEVICE,
        resident_mb=lambda wc: STUDY.config["compute"]["resident_mb"],
    params:
        settings=lambda wc: STUDY.continual_train_params(wc.run, wc.network),
        state=lambda wc: PATHS.path("continual_train_state", run=wc.run, network=wc.network),
    script:
        "../scripts/pretrain.py"


rule continual_swap:
    """Locate the tunnel on the ID curves of E1+T1 and E2+T2; compose E1+T2 and E2+T1."""
    input:
        networks=lambda wc: [network_checkpoint(wc.run, n) for n in TASK_NETWORKS],
        evaluations=lambda wc: [PATHS.path("continual_evaluation", run=wc.run, network=n) for n in TASK_NETWORKS],
    output:
        tunnel=PATHS.path("continual_tunnel"),
        e1t2=PATHS.path("continual_checkpoint", network="e1-t2"),
        e2t1=PATHS.path("continual_checkpoint", network="e2-t1"),
    log:
        PATHS.log("continual_swap"),
    wildcard_constraints:
        run=cell_pattern(RUNS),
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.continual_swap_params(wc.run),
    script:
        "../scripts/continual_swap.py"


rule continual_finetune:
    """A finetune configuration: parts of a composed network trained on one task, the rest frozen."""
    input:
        data=lambda wc: STUDY.run_prepared_path(wc.run),
        init=lambda wc: network_checkpoint(wc.run, network_slug(STUDY.continual_finetune(wc.network)["start"])),
        tunnel=PATHS.path("continual_tunnel"),
    output:
        checkpoint=PATHS.path("continual_checkpoint"),
        train_log=PATHS.path("continual_train_log"),
        info=PATHS.path("continual_info"),
    log:
        PATHS.log("continual_finetune"),
    benchmark:
        PATHS.benchmark("continual_finetune")
    wildcard_constraints:
        run=cell_pattern(RUNS),
        network=cell_pattern(FINETUNED),
    conda:
        ENV
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_PER_JOB,
        device=DEVICE,
        resident_mb=lambda wc: STUDY.config["compute"]["resident_mb"],
    params:
        settings=lambda wc: STUDY.continual_finetune_params(wc.run, wc.network),
        state=lambda wc: PATHS.path("continual_train_state", run=wc.run, network=wc.network),
    script:
        "../scripts/pretrain.py"


rule continual_evaluate:
    """One configuration on both tasks: embeddings, probes (every layer on its own task for
    E1+T1 and E2+T2, else the last) and its classifier's accuracy."""
    input:
        checkpoint=lambda wc: network_checkpoint(wc.run, wc.network),
        data=lambda wc: STUDY.run_prepared_path(wc.run),
    output:
        embeddings=embeddings_output(PATHS.path("continual_embeddings")),
        evaluation=PATHS.path("continual_evaluation"),
    log:
        PATHS.log("continual_evaluate"),
    benchmark:
        PATHS.benchmark("continual_evaluate")
    wildcard_constraints:
        run=cell_pattern(RUNS),
        network=cell_pattern(NETWORKS),
    conda:
        ENV
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_PER_JOB,
        device=DEVICE,
        resident_mb=lambda wc: STUDY.config["compute"]["resident_mb"],
        embed_batch=lambda wc: STUDY.config["embed"]["batch_size"],
    params:
        settings=lambda wc: STUDY.continual_evaluate_params(wc.run, wc.network),
    script:
        "../scripts/continual_evaluate.py"


rule continual_table:
    """Table 2 (CSV and LaTeX), every score in long form, and the ID curves with their tunnels."""
    input:
        evaluations=[PATHS.path("continual_evaluation", run=r, network=n) for r in RUNS for n in NETWORKS],
        tunnels=[PATHS.path("continual_tunnel", run=r) for r in RUNS],
    output:
        csv=report(
            PATHS.path("paper_table", table="continual", ext="csv"),
            caption="../report/continual_table.rst",
            category="Continual learning",
        ),
        tex=PATHS.path("paper_table", table="continual", ext="tex"),
        scores=PATHS.path("continual_scores"),
        png=report(
            PATHS.path("continual_curves", ext="png"),
            caption="../report/continual_curves.rst",
            category="Continual learning",
        ),
        pdf=PATHS.path("continual_curves", ext="pdf"),
    log:
        PATHS.log("continual_table"),
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.continual_table_params(),
        seeds=lambda wc: STUDY.seed_params(),
        caption=f"{CONTINUAL_TABLE[1]} Laid out like the paper's {CONTINUAL_TABLE[0]}.",
        report_caption=item_caption(relative("paper_table", table="continual", ext="csv")),
        curves_caption=item_caption(relative("continual_curves", ext="png")),
    script:
        "../scripts/continual_table.py"


rule continual:
    """Target: the continual-learning experiment (config section continual)."""
    input:
        rules.continual_table.output,
