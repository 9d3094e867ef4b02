"""Crashes, corrupt files, numerical faults and unsafe pickles (issue 8)."""

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from inmemory import write_arrays
from tunnelscope import io
from tunnelscope.models.checkpoints import load_backbone
from tunnelscope.registry import IMAGENET_MEAN, IMAGENET_STD
from tunnelscope.study.schema import load_schema, section_settings
from tunnelscope.training.loop import pretrain

TRAINING = {
    **section_settings(load_schema(), "training", {}),
    "epochs": 3,
    "batch_size": 32,
    "lr": 0.01,
    "warmup_epochs": 1,
    "val_fraction": 0.1,
}
NORMALIZATION = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
PARAMS = {
    "arch": "vggm11",
    "id_dataset": "toy",
    "resolution": 32,
    "augmentation": "rrc_flip",
    "seed": 0,
    "model": {"width": 0.125},
    "training": TRAINING,
    "normalization": NORMALIZATION,
    "compute": {"precision": "fp32"},
}


def toy_store(root, n=200, size=32):
    """A prepared store of n random images (4 classes), written under ``root``."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 4
    return write_arrays(Path(root) / f"toy{n}", {"train": (images, labels), "test": (images[:40], labels[:40])}, 4, 32)


def checkpoint_files(out: Path) -> dict:
    """pretrain's output paths under ``out``."""
    names = {
        "checkpoint": "ckpt.safetensors",
        "train_log": "log.csv",
        "info_path": "info.json",
        "state_path": "state.pt",
    }
    return {key: out / name for key, name in names.items()}


def run_pretrain(tmp_path, params=PARAMS, store=None):
    store = store or toy_store(tmp_path)
    return pretrain(params, store, **checkpoint_files(tmp_path))


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
    with pytest.raises(
        FloatingPointError, match=r"cell vggm11_toy_r32_rrc_flip_s0: non-finite training loss .* in epoch 1"
    ):
        run_pretrain(tmp_path, params)
    assert not (tmp_path / "ckpt.safetensors").exists()


SCRIPT = textwrap.dedent(
    """
    import sys, pathlib
    sys.path.insert(0, {tests!r})
    from test_reliability import PARAMS, TRAINING, checkpoint_files, toy_store
    from tunnelscope.runtime import JobRuntime
    from tunnelscope.training.loop import pretrain
    out = pathlib.Path(sys.argv[1])
    # best_val: the kept weights come from the resume state's copy of the best epoch;
    # images 36 px wide and resident_mb {resident}: the crops of the streamed or resident path.
    params = dict(PARAMS, training=dict(TRAINING, epochs=4, checkpoint="best_val"))
    store = toy_store(out, 600, size=36)
    pretrain(params, store, **checkpoint_files(out), runtime=JobRuntime(threads=2, resident_mb={resident}))
    """
)


def test_sigkill_mid_training_resumes_to_bitwise_equal_weights(tmp_path):
    """The streamed data path (workers reading the store) gives the weights the resident one does,
    and a run killed mid-training resumes to them bitwise."""
    runs = {}
    for name, resident in (("resident", 1024), ("streamed", 0), ("killed", 0)):
        script = tmp_path / f"train_{name}.py"
        script.write_text(SCRIPT.format(tests=os.path.dirname(__file__), resident=resident))
        runs[name] = tmp_path / name
        runs[name].mkdir()
    for name in ("resident", "streamed"):
        subprocess.run([sys.executable, str(tmp_path / f"train_{name}.py"), str(runs[name])], check=True, timeout=600)
    killed = runs["killed"]
    proc = subprocess.Popen([sys.executable, str(tmp_path / "train_killed.py"), str(killed)])
    deadline = time.time() + 300
    while not (killed / "state.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    proc.kill()
    proc.wait()
    assert not (killed / "ckpt.safetensors").exists(), "the run finished before it could be killed"
    subprocess.run([sys.executable, str(tmp_path / "train_killed.py"), str(killed)], check=True, timeout=600)
    # a kill inside a write may leave its temporary; the resumed run clears it
    assert not [p for p in killed.iterdir() if p.name.endswith(".tmp")]
    weights = {name: load_file(runs[name] / "ckpt.safetensors") for name in runs}
    for name in ("streamed", "killed"):
        assert weights[name].keys() == weights["resident"].keys() and all(
            torch.equal(weights[name][k], weights["resident"][k]) for k in weights[name]
        ), name
    info = {name: json.loads((runs[name] / "info.json").read_text()) for name in runs}
    assert len({(i["checkpoint_epoch"], i["test_acc"]) for i in info.values()}) == 1
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


def test_temporaries_of_a_killed_write_are_cleared_by_the_next(tmp_path):
    (tmp_path / ".state.pt.k3j1.tmp").write_bytes(b"half an epoch")
    (tmp_path / ".embeddings.x9.tmp").mkdir()
    (tmp_path / ".other.pt.a1.tmp").write_bytes(b"another job's")
    with io.atomic_path(tmp_path / "state.pt") as tmp:
        open(tmp, "wb").write(b"whole")
    with io.atomic_dir(tmp_path / "embeddings") as tmp:
        (tmp / "layer.parquet").write_bytes(b"rows")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.a1.tmp", "embeddings", "state.pt"]


def test_unwritable_output_location_fails_clearly(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(OSError):
        io.write_json({"a": 1}, blocker / "cells" / "x.json")
    assert blocker.read_text().startswith("a file")
