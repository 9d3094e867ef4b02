# Shared state of the DAG: the validated study, its cells, and path helpers.
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from tunnelscope.config import ConfigError, Study, load_schema

try:
    STUDY = Study(
        config, load_schema(workflow.source_path("../schemas/config.schema.yaml"))
    )
except ConfigError as error:
    sys.exit(f"tunnelscope: config error: {error}")

RESULTS = STUDY.results
CELLS = list(STUDY.cells)  # grid order: the aggregate tables list cells in it


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


wildcard_constraints:
    cell=cell_pattern(CELLS),
    dataset=r"[A-Za-z][A-Za-z0-9-]*",
    eval_set=r"[A-Za-z][A-Za-z0-9-]*",
    transform=r"r\d+(-[a-z]+-c[0-9.]+)?(-native)?",
    solver=r"lbfgs|sklearn|paper",


def embed_dirs(wc):
    return [
        f"{RESULTS}/cells/{wc.cell}/embeddings/{e}" for e in STUDY.eval_sets(wc.cell)
    ]


def probe_table(cell, eval_set, solver=None, suffix=".parquet"):
    """A probe job's table (or, with suffix ".weights.npz", its weights); default the cell's
    first solver, the one its metrics use."""
    return f"{RESULTS}/cells/{cell}/probes/{solver or STUDY.solvers(cell)[0]}/{eval_set}{suffix}"


def probe_tables(wc):
    return [probe_table(wc.cell, e) for e in STUDY.eval_sets(wc.cell)]


onstart:
    # Before any job runs (never in a dry run): every dataset root that a pending prepare job
    # reads must exist, so a typo fails now rather than hours into the run.
    missing = STUDY.missing_roots(
        lambda ds, transform: Path(
            f"{RESULTS}/prepared/{ds}/{transform}/store.json"
        ).exists()
    )
    if missing:
        sys.exit("tunnelscope: " + "; ".join(missing))
