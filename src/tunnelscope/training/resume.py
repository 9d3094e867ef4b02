"""The resume state of a training run: everything a rerun needs to continue bitwise after an
epoch, written after every epoch and read back on any device."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from tunnelscope.io import atomic_path

log = logging.getLogger("tunnelscope.train")


def _numpy_rng() -> dict:
    """numpy's global generator (timm's Mixup draws from it) as tensors and numbers, so a resume
    state holding it still loads with ``weights_only``."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }


def _set_numpy_rng(state: dict) -> None:
    np.random.set_state(
        ("MT19937", state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["gauss"])
    )


def save_train_state(path: Path, device, model, optimizer, scheduler, gen, fingerprint: str, history, epoch, best):
    """Everything a rerun needs to continue bitwise after ``epoch``: weights, optimiser and
    schedule, the kept best weights (on the CPU), the history, and every generator the training
    draws from: ``gen`` (orders, crops), torch's and numpy's global ones (timm's Mixup), and on a
    CUDA device its generator (drop_path's draws). Generator states are CPU byte tensors."""
    state = {
        "best_score": best["score"],
        "best_epoch": best["epoch"],
        "best_weights": best["weights"] or {},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": _numpy_rng(),
        "history": json.dumps(history),
        "epoch": epoch,
        "fingerprint": fingerprint,
    }
    if torch.device(device).type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_train_state(
    path: Path, device, fingerprint: str, model, optimizer, scheduler, gen
) -> tuple[list[dict], int, dict] | None:
    """Restore what ``save_train_state`` wrote into the training objects: (history, epochs done,
    best) or None when the state was made with other settings (``fingerprint``). Whatever device
    wrote it, the file is read onto the CPU: generator states must stay CPU byte tensors (set_state
    refuses others), weights and AdamW's moments are copied onto the model's device by
    ``load_state_dict``, and AdamW's ``step`` counts stay on the CPU, where AdamW keeps them when
    neither fused nor capturable (on a device each step would read them back to the host).
    A RuntimeError naming the file when it cannot be read or restored."""
    try:
        # weights_only: a state file is data; a crafted pickle is refused, never executed.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (truncated zip), EOFError, ...
        raise RuntimeError(
            f"{path}: resume state cannot be loaded safely ({type(exc).__name__}); delete it to train from scratch"
        ) from exc
    try:
        if state["fingerprint"] != fingerprint:
            return None
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        _set_numpy_rng(state["numpy_rng"])
        _set_cuda_rng(state.get("cuda_rng"), torch.device(device), path)
        best = {
            "score": float(state["best_score"]),
            "epoch": int(state["best_epoch"]),
            "weights": state["best_weights"] or None,
        }
        return json.loads(state["history"]), int(state["epoch"]), best
    except Exception as exc:  # a key missing, a tensor of another shape or type, ...
        first_line = str(exc).strip().split("\n")[0]  # load_state_dict lists every key on lines of its own
        reason = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
        raise RuntimeError(
            f"{path}: resume state cannot be restored ({reason}); delete it to train from scratch"
        ) from exc


def _set_cuda_rng(state: torch.Tensor | None, device: torch.device, path: Path) -> None:
    """Restore the CUDA generator of ``device`` (the job's GPU, whatever its index)."""
    if device.type != "cuda":
        return  # a GPU run's state resumed elsewhere: nothing draws from CUDA here
    if state is None:
        log.warning("%s was written off CUDA: the CUDA generator (drop_path) restarts from the seed", path)
        return
    torch.cuda.set_rng_state(state, device)
