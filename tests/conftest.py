import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _pytest.nodeid import NodeId

from tunnelscope.study.schema import load_schema

REPO = Path(__file__).resolve().parents[1]

# Cores a test's Snakemake run may use: this machine's, shared among the pytest-xdist workers
# (pyproject: `-n 2`), so that two workers' runs side by side do not oversubscribe the cores.
CORES = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


def pytest_configure(config):
    """In an xdist worker, torch keeps to the worker's share of the cores, in this process and in
    the processes its tests start (Snakemake sets its jobs' own): OpenMP threads spin while they
    wait, so two workers of two threads each on two cores burn CPU waiting for each other
    (tests/test_models.py and test_probe.py under load: 72 CPU-s at two threads, 18 at one)."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        import torch

        os.environ["OMP_NUM_THREADS"] = CORES
        torch.set_num_threads(int(CORES))


# Session fixtures too costly to build once per xdist worker: every test using one runs on one worker.
SHARED_SESSION_FIXTURES = ("study",)


def _work_group(item) -> str | None:
    """The xdist group of a test: the costly session fixture it uses, else its module when it
    uses a module-scoped fixture of that module (built once, as in a serial run), else none."""
    defs = item._fixtureinfo.name2fixturedefs
    for name in SHARED_SESSION_FIXTURES:
        if name in defs:
            return name
    for fixturedefs in defs.values():
        if any(d.scope == "module" and d.func.__module__ == item.module.__name__ for d in fixturedefs):
            return item.module.__name__
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the groups
def pytest_collection_modifyitems(config, items):
    """Group tests sharing costly fixtures (--dist loadgroup), and start the modules with
    integration tests first, so that the longest runs are not the last ones left on one worker
    (a stable sort: each module stays whole and in file order, its fixtures built once)."""
    for item in items:
        if group := _work_group(item):
            item.add_marker(pytest.mark.xdist_group(group))
            if config.getoption("loadgroup", False):
                # xdist 3.8 puts the group into the node id by setting item._nodeid, which pytest
                # 9.2 no longer reads (the id is a NodeId in item._id); without this, no groups.
                item._id = NodeId.parse(f"{item.nodeid}@{group}")
    slow_modules = {item.module for item in items if item.get_closest_marker("integration")}
    items.sort(key=lambda item: item.module not in slow_modules)


@pytest.fixture(scope="session")
def schema():
    return load_schema()


@pytest.fixture()
def default_config():
    with open(REPO / "config.yaml") as fh:
        return yaml.safe_load(fh)


TINY = {
    "results": "out",
    "datasets": {
        "toy": {"source": "synthetic", "family": "shapes", "classes": 4, "train_per_class": 24, "test_per_class": 8},
        "toy-glyphs": {
            "source": "synthetic",
            "family": "glyphs",
            "classes": 3,
            "train_per_class": 12,
            "test_per_class": 6,
        },
        "digits": {"source": "sklearn_digits"},
        "toy-blur": {"source": "corrupted", "of": "toy", "corruption": "gaussian_blur", "severity": 5},
    },
    "grid": {
        "arch": ["vggm11"],
        "id_dataset": ["toy"],
        "resolution": [32],
        "augmentation": ["none", "rrc_flip"],
        "seed": [0],
    },
    "ood_sets": ["toy-glyphs", "digits", "toy-blur"],
    "model": {"width": 0.125},
    "training": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0},
    "probe": {"max_iter": 50},
}
CELLS = ["vggm11_toy_r32_none_s0", "vggm11_toy_r32_rrc_flip_s0"]
EVAL_SETS = ["toy", "toy-glyphs", "digits", "toy-blur"]


def snakemake_cmd(workdir, *args, configfile=None):
    """The snakemake CLI on this repository's Snakefile, in ``workdir``, on ``configfile``
    (default: ``workdir``/tiny.yaml)."""
    config = configfile or Path(workdir) / "tiny.yaml"
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        *args,
    ]


def snakemake(workdir, *args):
    cmd = snakemake_cmd(workdir, "--cores", CORES, *args)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def tunnelscope_cli(workdir, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The tunnelscope CLI of this checkout (its src/ first on the path), run in ``workdir``."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "tunnelscope.cli", *args]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def planned_jobs(output: str) -> set[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run lists."""
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        head = re.match(r"(?:local)?rule (\w+):", block.strip())
        if head:
            wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
            jobs.add((head.group(1), wildcards.group(1) if wildcards else ""))
    return jobs


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """The tiny study, run once per test session and shared by the integration tests."""
    workdir = tmp_path_factory.mktemp("study")
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    snakemake(workdir)
    return workdir
