"""Crashes, corrupt files, numerical faults and unsafe pickles (issue 8)."""

import errno
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import SCHEMA_PATH
from tunnelscope import io
from tunnelscope.config import IMAGENET_MEAN, IMAGENET_STD, load_schema, section_defaults
from tunnelscope.datasets import Prepared, Split
from tunnelscope.train import load_backbone, pretrain

TRAINING = {**section_defaults(load_schema(SCHEMA_PATH), "training"), "epochs": 3, "batch_size": 32, "lr": 0.01, "warmup_epochs": 1, "val_fraction": 0.1}
NORMALIZATION = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
PARAMS = {
    "arch": "vggm11", "id_dataset": "toy", "resolution": 32, "augmentation": "rrc_flip", "seed": 0, "model": {"width": 0.125},
    "training": TRAINING, "normalization": NORMALIZATION, "compute": {"precision": "fp32"},
}


def toy_data(n=200):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n) % 4
    return Prepared("toy", 32, 4, {"train": Split(images, labels), "test": Split(images[:40], labels[:40])})


def run_pretrain(tmp_path, params=PARAMS, data=None):
    return pretrain(params, data or toy_data(), tmp_path / "ckpt.safetensors", tmp_path / "log.csv", tmp_path / "info.json", tmp_path / "state.pt")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_resume_state_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"payload": _Exploit(marker)}, tmp_path / "state.pt")
    with pytest.raises(RuntimeError, match="state.pt: resume state cannot be loaded safely"):
        run_pretrain(tmp_path)
    assert not marker.exists()
    assert not (tmp_path / "ckpt.safetensors").exists()


def test_corrupt_checkpoint_is_named(tmp_path):
    bad = tmp_path / "checkpoint.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(RuntimeError, match="checkpoint.safetensors: not a readable tunnelscope checkpoint"):
        load_backbone(str(bad))


def test_non_finite_loss_names_the_cell_and_epoch(tmp_path):
    params = dict(PARAMS, training=dict(TRAINING, lr=1e30, warmup_epochs=0))
    with pytest.raises(FloatingPointError, match=r"cell vggm11_toy_r32_rrc_flip_s0: non-finite training loss .* in epoch 1"):
        run_pretrain(tmp_path, params)
    assert not (tmp_path / "ckpt.safetensors").exists()


SCRIPT = textwrap.dedent(
    """
    import sys, pathlib
    sys.path.insert(0, {tests!r})
    from test_reliability import PARAMS, TRAINING, toy_data
    from tunnelscope.train import pretrain
    out = pathlib.Path(sys.argv[1])
    # best_val: the kept weights come from the resume state's copy of the best epoch.
    params = dict(PARAMS, training=dict(TRAINING, epochs=4, checkpoint="best_val"))
    pretrain(params, toy_data(600), out / "ckpt.safetensors", out / "log.csv", out / "info.json", out / "state.pt", threads=1)
    """
)


def test_sigkill_mid_training_resumes_to_bitwise_equal_weights(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=os.path.dirname(__file__)))
    full, killed = tmp_path / "full", tmp_path / "killed"
    full.mkdir(), killed.mkdir()
    subprocess.run([sys.executable, str(script), str(full)], check=True, timeout=600)
    proc = subprocess.Popen([sys.executable, str(script), str(killed)])
    deadline = time.time() + 300
    while not (killed / "state.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    proc.kill()
    proc.wait()
    assert not (killed / "ckpt.safetensors").exists(), "the run finished before it could be killed"
    assert not [p for p in killed.iterdir() if p.name.endswith(".tmp")]
    subprocess.run([sys.executable, str(script), str(killed)], check=True, timeout=600)
    a, b = load_file(full / "ckpt.safetensors"), load_file(killed / "ckpt.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (full / "log.csv").read_text().splitlines()[0] == (killed / "log.csv").read_text().splitlines()[0]
    info = [json.loads((d / "info.json").read_text()) for d in (full, killed)]
    assert info[0]["checkpoint_epoch"] == info[1]["checkpoint_epoch"] and info[0]["test_acc"] == info[1]["test_acc"]
    assert not (killed / "state.pt").exists()


def test_failed_write_leaves_no_partial_output(tmp_path, monkeypatch):
    target = tmp_path / "table.parquet"

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        with io.atomic_path(target) as tmp:
            open(tmp, "wb").write(b"partial")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_location_fails_clearly(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(OSError):
        io.write_json({"a": 1}, blocker / "cells" / "x.json")
    assert blocker.read_text().startswith("a file")
