# Shared state of the DAG: the validated study, its cells, and path helpers.
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from tunnelscope.figures.captions import item_caption
from tunnelscope.gpuhost import gpus_present
from tunnelscope.integrity import REBUILD_ENV, rebuild_base
from tunnelscope.registry import COMPOSED, SOLVERS, TRAINED, TRANSFORM_TAG, network_slug
from tunnelscope.study import manifest
from tunnelscope.study.paths import relative
from tunnelscope.study.config import Study
from tunnelscope.study.schema import ConfigError, load_schema

try:
    STUDY = Study(config, load_schema())
except ConfigError as error:
    sys.exit(f"tunnelscope: config error: {error}")

RESULTS = STUDY.results
# Every path of the study's files (tunnelscope.study.paths): PATHS.path(NAME) is a rule's pattern,
# PATHS.path(NAME, cell=...) one job's file; PATHS.log(RULE) and PATHS.benchmark(RULE) likewise.
PATHS = STUDY.paths

# The command that rebuilds this study's files, which every damage message of its jobs ends with
# (tunnelscope.integrity): the jobs inherit it through the environment.
try:
    RUN_CORES = workflow.cores
except WorkflowError:  # no --cores: a cluster executor or report generation
    RUN_CORES = None
if workflow.is_main_process or REBUILD_ENV not in os.environ:
    os.environ[REBUILD_ENV] = rebuild_base(
        RUN_CORES,
        workflow.main_snakefile,
        workflow.overwrite_configfiles,
        Path.cwd(),
        workflow.workdir_init,
    )
CELLS = list(STUDY.cells)  # grid order: the aggregate tables list cells in it

# One study per results directory (tunnelscope.study.manifest). Checked here, as the Snakefile is
# read, so that a run with nothing to do (no onstart), a dry run or a report of another study is
# refused too; written only in onstart, before the first job of a real run. Only the main
# process: the jobs that a cluster executor runs read this Snakefile too.
if workflow.is_main_process:
    OWNER = manifest.Owner.here(workflow.configfiles)
    SETTINGS = manifest.study_settings(STUDY.config)
    try:
        manifest.check(RESULTS, OWNER, SETTINGS)
    except manifest.ManifestError as error:
        sys.exit(f"tunnelscope: {error}")


def embeddings_output(path):
    """An embeddings directory; with embed.keep false, temp(): Snakemake deletes it once every job
    of the run that reads it has finished."""
    return directory(path) if STUDY.config["embed"]["keep"] else temp(directory(path))


def cell_pattern(cells):
    """A wildcard constraint matching exactly these cells (nothing when there are none)."""
    return "|".join(map(re.escape, cells)) or "(?!)"


ENV = "../../envs/tunnelscope.yaml"

# Threads of the heavy jobs (prepare, pretrain, embed, the continual runs): 2, or 1 where the run
# has fewer than 4 cores, since on 2 cores two one-thread jobs side by side beat one two-thread
# job (a small CPU pretrain epoch: 3.1 core-seconds at one thread, 4.2 at two, measured) and a
# 2-thread job would hold every core. Profiles set their own (set-threads).
try:
    HEAVY_THREADS = 1 if (workflow.cores or 4) < 4 else 2
except WorkflowError:
    # No --cores: a cluster executor or report generation; profiles set threads.
    HEAVY_THREADS = 2

# GPUs. A run that schedules jobs on this machine (not a cluster executor, whose --jobs Snakemake
# keeps as nodes; not a job a cluster runs) counts the NVIDIA GPUs it may use, without torch.
# Each GPU rule (pretrain, embed, probe, the continual runs) asks for one of them (none on a
# machine without, or with compute.device: cpu), and unless --resources gpu=N says otherwise, at
# most as many GPU jobs as GPUs run at once: a plain `snakemake --cores N` never stacks GPU jobs.
# On a cluster the profile's gpu resource asks the scheduler (profiles/slurm).
SCHEDULES_HERE = workflow.is_main_process and workflow.global_resources["_nodes"].value is None
GPUS_HERE = gpus_present() if SCHEDULES_HERE else 0
GPU_PER_JOB = int(GPUS_HERE > 0 and STUDY.config["compute"]["device"] != "cpu")
if SCHEDULES_HERE and "gpu" not in workflow.global_resources:
    workflow.register_resource("gpu", GPUS_HERE)
# A job's device setting travels as a resource, not a param: changing it reruns nothing.
DEVICE = STUDY.config["compute"]["device"]


wildcard_constraints:
    cell=cell_pattern(CELLS),
    dataset=r"[A-Za-z][A-Za-z0-9-]*",
    eval_set=r"[A-Za-z][A-Za-z0-9-]*",
    transform=TRANSFORM_TAG.pattern,
    solver=cell_pattern(SOLVERS),


def probe_file(cell, eval_set, solver=None, name="probe_table"):
    """A probe job's file (probe_table, probe_weights or probe_predictions); default the cell's
    first solver, the one its metrics use."""
    return PATHS.path(name, cell=cell, eval_set=eval_set, solver=solver or STUDY.solvers(cell)[0])


def probe_tables(wc):
    return [probe_file(wc.cell, e) for e in STUDY.eval_sets(wc.cell)]


def probe_predictions(wc):
    return [probe_file(wc.cell, e, name="probe_predictions") for e in STUDY.eval_sets(wc.cell)]


def id_embeddings(wc):
    """The cell's embeddings of its ID set."""
    return PATHS.path("embeddings", cell=wc.cell, eval_set=STUDY.cells[wc.cell].id_dataset)


# Probe protocols (protocols.smk): the cells and shifted sets each comparison runs on.
def zero_shot_pairs():
    return [(c, e) for c in CELLS for e in STUDY.shifted_sets(c)]


def multi_solver_cells():
    return [c for c in CELLS if len(STUDY.solvers(c)) > 1]


def protocol_outputs():
    """The study-level outputs of protocols.smk that the study has data for (for rule all)."""
    outputs = []
    if zero_shot_pairs():
        outputs += [rules.zero_shot_table.output.png, rules.zero_shot_table.output.csv]
    if multi_solver_cells():
        outputs += [rules.solver_table.output.png, rules.solver_table.output.csv]
    return outputs


def page_items():
    """The report's items that the paper page shows beside the paper build's own figures and tables
    (the cells table, per-cell figures, protocols, continual learning, tunnel length), so that the
    page shows everything the report does (tests/test_report.py compares the two)."""
    items = [rules.aggregate_cells.output.csv]
    for cell in CELLS:
        items += [PATHS.path(figure, cell=cell, ext="png") for figure in ("cell_figure", "tsne_figure")]
    items += protocol_outputs()
    if RUNS:
        items += [rules.continual_table.output.png, rules.continual_table.output.csv]
    if STUDY.mlp_cells():
        items += [rules.tunnel_length_figure.output.png, rules.rank_per_layer_figure.output.png]
    return items


def page_captions():
    """(title, caption) of each page_items() file: its path under RESULTS, its captions.ITEMS text."""
    names = [os.path.relpath(path, RESULTS) for path in page_items()]
    confidence = 1 - STUDY.config["metrics"]["alpha"]
    return [(n.rsplit(".", 1)[0], item_caption(n, confidence, STUDY.health_params())) for n in names]


# The continual-learning experiment (continual.smk): its runs, networks and their paths.
RUNS = list(STUDY.runs)
NETWORKS = [slug for slug, _ in STUDY.continual_networks()]
# E1+T1, E2+T2: the two trainings
TASK_NETWORKS = [network_slug(label) for label in TRAINED]
FINETUNED = [slug for slug, label in STUDY.continual_networks() if label not in COMPOSED]


def network_checkpoint(run, network):
    return PATHS.path("continual_checkpoint", run=run, network=network)


onstart:
    # Before any job runs (never in a dry run): every dataset root that a pending prepare job
    # reads must exist, so a typo fails now rather than hours into the run.
    missing = STUDY.missing_roots(
        lambda ds, transform: Path(PATHS.path("prepared_manifest", dataset=ds, transform=transform)).exists()
    )
    if missing:
        sys.exit("tunnelscope: " + "; ".join(missing))
    # Then the results directory: locked for the life of this process, checked again under the
    # lock, and the study recorded (by the main process only, as above).
    if workflow.is_main_process:
        try:
            _, note = manifest.claim(RESULTS, OWNER, SETTINGS)
        except manifest.ManifestError as error:
            sys.exit(f"tunnelscope: {error}")
        if note:
            print(f"tunnelscope: {note}", file=sys.stderr)


AGGREGATED = ("curves", "metrics", "layer_stats")  # grid-wide tables, each beside its seed summary
AGGREGATE = {name: PATHS.path("aggregate", table=name, ext="parquet") for name in (*AGGREGATED, "cells")}


def aggregate_inputs(wc):
    """The per-cell tables one grid-wide table concatenates."""
    if wc.table == "curves":
        return [probe_file(c, e) for c in CELLS for e in STUDY.eval_sets(c)]
    per_cell = {"metrics": "cell_metrics", "layer_stats": "layer_stats"}[wc.table]
    return expand(PATHS.path(per_cell), cell=CELLS)
