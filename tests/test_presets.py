"""Every shipped config validates (exit 0, a budget, warnings allowed for data not there yet) and
dry-runs: `tunnelscope validate` says "valid" only where the run will not fail on the config."""

import subprocess
import sys

import pytest
import yaml

from conftest import REPO, snakemake_cmd
from tunnelscope.study.config import Study

PRESETS = ["config.yaml", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "config").glob("*.yaml"))]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_validates_with_a_budget_and_dry_runs(preset, tmp_path):
    validate = subprocess.run(
        [sys.executable, "-m", "tunnelscope.cli", "validate", preset],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert validate.returncode == 0, validate.stderr[-2000:]
    assert "Traceback" not in validate.stdout + validate.stderr
    assert f"{preset}: valid;" in validate.stdout
    budget = [line for line in validate.stdout.splitlines() if line.startswith("budget:")]
    assert len(budget) == 1 and not budget[0].startswith("budget: 0 job-min"), validate.stdout[-2000:]
    for line in validate.stdout.splitlines():  # weights may arrive after validation, as data may
        if line.startswith("warning: pretrained.") and ".weights: file " in line:
            weights = tmp_path / line.split(".weights: file ")[1].removesuffix(" not found")
            weights.parent.mkdir(parents=True, exist_ok=True)
            weights.touch()  # a dry run only needs it to exist
    dry = subprocess.run(
        snakemake_cmd(tmp_path, "-n", "--cores", "2", configfile=REPO / preset),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-2000:]  # a dry run needs no data


def test_pretrained_preset_keeps_the_papers_eval_transform(schema):
    study = Study(yaml.safe_load((REPO / "config/pretrained.yaml").read_text()), schema)
    tags = {c.arch: study.transform(cid, "imagenet") for cid, c in study.cells.items()}
    assert tags == {
        "resnet50-sup": "r224-bilinear-c0.9655",  # the paper's stated per-model values
        "vit-b16-sup": "r224-bilinear-c0.875",
        "vit-b16-mae": "r224-bicubic-c0.9",
        **dict.fromkeys(
            ["resnet50-swav", "vit-b16-dino", "vit-b16-mugs", "convnext-b-sup", "convnextv2-b-fcmae"], "r224"
        ),
    }
