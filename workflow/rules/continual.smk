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
        checkpoint=f"{CONTINUAL}/{{run}}/{{network}}/checkpoint.safetensors",
        train_log=f"{CONTINUAL}/{{run}}/{{network}}/train_log.csv",
        info=f"{CONTINUAL}/{{run}}/{{network}}/cell.json",
    log:
        f"{RESULTS}/logs/continual_train/{{run}}_{{network}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/continual_train/{{run}}_{{network}}.tsv"
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
        state=lambda wc: f"{CONTINUAL}/{wc.run}/{wc.network}/train_state.pt",
    script:
        "../scripts/pretrain.py"


rule continual_swap:
    """Locate the tunnel on the ID curves of E1+T1 and E2+T2; compose E1+T2 and E2+T1."""
    input:
        networks=lambda wc: [network_checkpoint(wc.run, n) for n in TASK_NETWORKS],
        evaluations=lambda wc: [f"{CONTINUAL}/{wc.run}/{n}/evaluation.parquet" for n in TASK_NETWORKS],
    output:
        tunnel=f"{CONTINUAL}/{{run}}/tunnel.json",
        e1t2=f"{CONTINUAL}/{{run}}/e1-t2/checkpoint.safetensors",
        e2t1=f"{CONTINUAL}/{{run}}/e2-t1/checkpoint.safetensors",
    log:
        f"{RESULTS}/logs/continual_swap/{{run}}.log",
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
        tunnel=f"{CONTINUAL}/{{run}}/tunnel.json",
    output:
        checkpoint=f"{CONTINUAL}/{{run}}/{{network}}/checkpoint.safetensors",
        train_log=f"{CONTINUAL}/{{run}}/{{network}}/train_log.csv",
        info=f"{CONTINUAL}/{{run}}/{{network}}/cell.json",
    log:
        f"{RESULTS}/logs/continual_finetune/{{run}}_{{network}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/continual_finetune/{{run}}_{{network}}.tsv"
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
        state=lambda wc: f"{CONTINUAL}/{wc.run}/{wc.network}/train_state.pt",
    script:
        "../scripts/pretrain.py"


rule continual_evaluate:
    """One configuration on both tasks: embeddings, probes (every layer on its own task for
    E1+T1 and E2+T2, else the last) and its classifier's accuracy."""
    input:
        checkpoint=lambda wc: network_checkpoint(wc.run, wc.network),
        data=lambda wc: STUDY.run_prepared_path(wc.run),
    output:
        embeddings=embeddings_output(f"{CONTINUAL}/{{run}}/{{network}}/embeddings"),
        evaluation=f"{CONTINUAL}/{{run}}/{{network}}/evaluation.parquet",
    log:
        f"{RESULTS}/logs/continual_evaluate/{{run}}_{{network}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/continual_evaluate/{{run}}_{{network}}.tsv"
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
        evaluations=[f"{CONTINUAL}/{r}/{n}/evaluation.parquet" for r in RUNS for n in NETWORKS],
        tunnels=[f"{CONTINUAL}/{r}/tunnel.json" for r in RUNS],
    output:
        csv=report(
            f"{RESULTS}/paper/tables/continual.csv",
            caption="../report/continual_table.rst",
            category="Continual learning",
        ),
        tex=f"{RESULTS}/paper/tables/continual.tex",
        scores=f"{CONTINUAL}/scores.csv",
        png=report(
            f"{CONTINUAL}/tunnel_curves.png",
            caption="../report/continual_curves.rst",
            category="Continual learning",
        ),
        pdf=f"{CONTINUAL}/tunnel_curves.pdf",
    log:
        f"{RESULTS}/logs/continual_table.log",
    conda:
        ENV
    params:
        settings=lambda wc: STUDY.continual_table_params(),
        seeds=lambda wc: STUDY.seed_params(),
        caption=f"{CONTINUAL_TABLE[1]} Laid out like the paper's {CONTINUAL_TABLE[0]}.",
        report_caption=item_caption("paper/tables/continual.csv"),
        curves_caption=item_caption("continual/tunnel_curves.png"),
    script:
        "../scripts/continual_table.py"


rule continual:
    """Target: the continual-learning experiment (config section continual)."""
    input:
        rules.continual_table.output,
