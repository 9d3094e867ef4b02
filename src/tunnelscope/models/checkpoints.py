"""Backbone checkpoints: weights as safetensors with the facts they are rebuilt from, signed by a
SHA-256 that every reader checks."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file

from tunnelscope.integrity import damaged, relative
from tunnelscope.io import atomic_path, file_sha256
from tunnelscope.models.build import build_model, build_python_model

log = logging.getLogger("tunnelscope.checkpoints")


# Where the SHA-256 over a checkpoint's facts and weights sits: a field of the one metadata
# value. One key, not two: safetensors writes its metadata map in a random order per process, so
# a second key would make two runs' checkpoints differ in their bytes.
DIGEST_FIELD = "sha256"


def weights_sha256(state: dict, facts: str) -> str:
    """SHA-256 of a checkpoint's facts (their JSON, sorted keys, without the digest) and every tensor's
    name, dtype, shape and bytes, in name order: what a damaged header or weight would change."""
    digest = hashlib.sha256(facts.encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_backbone(model, checkpoint: str, meta: dict) -> None:
    """Weights as safetensors with ``meta`` (what ``load_backbone`` rebuilds from) and their
    SHA-256 (``weights_sha256``, checked by every reader), atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    facts = json.dumps(meta, sort_keys=True)
    signed = json.dumps({**meta, DIGEST_FIELD: weights_sha256(state, facts)}, sort_keys=True)
    with atomic_path(checkpoint) as tmp:
        save_file(state, tmp, metadata={"tunnelscope": signed})


def read_checkpoint(checkpoint: str) -> tuple[dict, dict]:
    """(facts, weights) of a checkpoint, checked against the SHA-256 recorded in it: a
    ``DamageError`` naming the file (and how to rebuild it) when unreadable or changed.
    Checkpoints written before the digest are read unchecked, with a warning."""
    from safetensors import safe_open

    try:
        with safe_open(checkpoint, framework="pt") as fh:
            header = fh.metadata()
        meta = json.loads(header["tunnelscope"])
        weights = load_file(checkpoint)
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise damaged(checkpoint, f"not a readable tunnelscope checkpoint ({exc})", relative(checkpoint)) from exc
    recorded = meta.pop(DIGEST_FIELD, None)
    if recorded is None:
        log.warning("%s: written before checkpoints had a digest; read unchecked", checkpoint)
    elif weights_sha256(weights, json.dumps(meta, sort_keys=True)) != recorded:
        raise damaged(
            checkpoint, "its weights or facts differ from the SHA-256 recorded when it was saved", relative(checkpoint)
        )
    return meta, weights


def load_backbone(checkpoint: str, device=None):
    """Rebuild a pretrained backbone from its safetensors checkpoint (no pickle involved), checked
    (``read_checkpoint``) before use."""
    meta, weights = read_checkpoint(checkpoint)
    p = meta["params"]
    if "kwargs" in meta:  # an imported python: model, called with its entry's kwargs as they are
        model = build_python_model(p["arch"], meta["kwargs"])
    else:
        model = build_model(
            p["arch"], meta["num_classes"], p["model"]["width"], p["resolution"], kwargs=p["model"].get("kwargs")
        )
    model.load_state_dict(weights)
    return model.to(device or "cpu").eval(), meta


@dataclass(frozen=True)
class Backbone:
    """A backbone loaded from its checkpoint, for a job that uses it more than once (the
    continual evaluation scores its classifier and embeds its layers)."""

    model: torch.nn.Module
    meta: dict
    checkpoint: str

    @classmethod
    def load(cls, checkpoint: str, device=None) -> Backbone:
        return cls(*load_backbone(checkpoint, device), checkpoint)

    @functools.cached_property
    def checkpoint_sha256(self) -> str:
        """The checkpoint file's SHA-256, read once however many eval sets it embeds."""
        return file_sha256(self.checkpoint)
