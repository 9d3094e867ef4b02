import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunnelscope.study.config import load_schema

REPO = Path(__file__).resolve().parents[1]


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
    cmd = snakemake_cmd(workdir, "--cores", "2", *args)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


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
