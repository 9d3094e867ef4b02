"""README "Your model, your data", run as written: a model from a .py file with named probe points
and a saved state dict, through the tunnelscope and snakemake CLIs, ending with its best layers.

The acceptance checks of the answer ride on that run: every interval holds its estimate, and the
layer chosen on the probe's validation split does not move when only the OOD test labels change
(the OOD set's test images moved to other class folders, the study rerun)."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import REPO
from tunnelscope.data.synthetic import class_images

BLOCK = re.compile(r"<!-- own-model: (\S+) -->\n```\w+\n(.*?)```", re.DOTALL)
pytestmark = pytest.mark.integration


def _blocks() -> dict[str, str]:
    return dict(BLOCK.findall((REPO / "README.md").read_text()))


def _write_tree(root: Path, family: str, classes: int, train: int, test: int) -> None:
    """An ImageFolder tree of procedural images, PNG files as a user's would be."""
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"{family}-{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(class_images(family, c, n, 32, split)):
                Image.fromarray(image).save(folder / f"{i:03d}.png")


def _command(line: str) -> list[str] | None:
    """A README command line as this test runs it: the CLIs from this interpreter, snakemake on
    this checkout's Snakefile (the README's user runs in the checkout, the test in a temp dir)."""
    words = shlex.split(line, comments=True)
    if not words or words[0] == ".":  # activating the venv: this interpreter is it
        return None
    if words[0] == "tunnelscope":
        return [sys.executable, "-m", "tunnelscope.cli", *words[1:]]
    if words[0] == "snakemake":
        return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *words[1:]]
    raise AssertionError(f"README command not understood by this test: {line}")


def _run(cmd: list[str], cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_readme_own_model_runs_as_written(tmp_path):
    blocks = _blocks()
    assert sorted(blocks) == ["commands", "mynet.py", "mynet.yaml"]
    assert len(blocks["mynet.yaml"].splitlines()) + len(blocks["commands"].splitlines()) <= 20
    (tmp_path / "mynet.py").write_text(blocks["mynet.py"])
    (tmp_path / "mynet.yaml").write_text(blocks["mynet.yaml"])
    _write_tree(tmp_path / "data" / "mine", "shapes", 10, 12, 8)
    _write_tree(tmp_path / "data" / "other", "glyphs", 5, 16, 12)
    sys.path.insert(0, str(tmp_path))
    try:
        from mynet import build
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    torch.save(build().state_dict(), tmp_path / "mynet.pt")  # the user's checkpoint

    outputs = [_run(cmd, tmp_path) for cmd in map(_command, blocks["commands"].splitlines()) if cmd]
    layers, validate, answer = outputs[0], outputs[1], outputs[-1]
    for name in ("features.0", "features.1", "features.2"):
        assert re.search(rf"^{re.escape(name)}\s", layers, re.M)
    assert "mynet.yaml: valid; 1 cells" in validate
    assert "-> other" in answer and "best layer" in answer and "validation-chosen layer" in answer

    best = pd.read_parquet(tmp_path / "results-mynet" / "aggregate" / "best_layers.parquet")
    assert len(best) == 1 and best.ood_set.iloc[0] == "other"
    row = best.iloc[0]
    assert row.best_layer_name in ("features.0", "features.1", "features.2")
    for name in ("best_acc", "val_chosen_acc", "last_acc", "gap_best_last"):
        assert row[f"{name}_ci_low"] <= row[name] <= row[f"{name}_ci_high"], name
    assert str(row.best_layer) in str(row.indistinguishable_layers).split(",")

    # Only the OOD test labels change: each test image moves to the next class folder.
    test = tmp_path / "data" / "other" / "test"
    folders = sorted(p for p in test.iterdir() if p.is_dir())
    moved = tmp_path / "moved"
    for k, folder in enumerate(folders):
        target = moved / folders[(k + 1) % len(folders)].name
        target.mkdir(parents=True)
        for image in folder.iterdir():
            image.rename(target / image.name)
    for folder in folders:
        folder.rmdir()
        (moved / folder.name).rename(folder)
    _run(_command("snakemake results-mynet/aggregate/best_layers.parquet --cores 2 --configfile mynet.yaml"), tmp_path)
    after = pd.read_parquet(tmp_path / "results-mynet" / "aggregate" / "best_layers.parquet").iloc[0]
    assert after.val_chosen_layer == row.val_chosen_layer
    assert not np.isclose(after.last_acc, row.last_acc) or not np.isclose(after.best_acc, row.best_acc)
