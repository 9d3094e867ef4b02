"""Checkpoints: backbones as safetensors with their facts, published backbones imported as cells."""

from __future__ import annotations

import hashlib
import json
import logging
import math

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from tunnelscope.integrity import damaged, relative
from tunnelscope.io import atomic_path, write_csv, write_json
from tunnelscope.models.build import (
    build_model,
    build_python_model,
    check_forward_order,
    count_parameters,
    describe,
    probe_points,
)
from tunnelscope.registry import (
    CELL_VARIABLES,
    arch_facts,
    parse_python_arch,
)

# The over-parameterisation level gamma = P / N as Harun et al. code it: N = the whole ID training
# split (no hold-out subtracted), P = the count their architecture table quotes for a 100-class
# head whatever the ID set (registry.ARCHS params_m); for other widths and models (MLPs, whose count
# grows with the resolution, among them), the count with a 100-class head rounded to 0.01M.
GAMMA_HEAD_CLASSES = 100

log = logging.getLogger("tunnelscope.train")


def backbone_info(
    model, params: dict, arch: str, id_classes: int, n_train: int, gamma_params: int | None = None
) -> dict:
    """The cell.json fields every backbone has: cell variables, the analysis variables of the
    built ``arch``, size, gamma and the number of probe points. ``gamma_params``: P of gamma
    (default: the model's own count, as for published backbones)."""
    points = probe_points(model, "default", params["model"].get("probe_points", "default"))
    n_params = count_parameters(model)
    gamma_params = n_params if gamma_params is None else gamma_params
    facts = {k: v for k, v in describe(model, arch, params["resolution"], points).items() if k != "params_m"}
    return {
        **{k: params[k] for k in CELL_VARIABLES},
        **facts,
        "label": (arch_facts(params["arch"]) or {}).get("label", params["arch"]),  # a published model: its entry's name
        "width": params["model"]["width"],
        "id_classes": id_classes,
        "n_train": int(n_train),
        "params": n_params,  # the built model's, this head included
        "paper_params_m": paper_params_m(params["arch"], params["model"]["width"]),
        "gamma_params": gamma_params,
        "gamma": gamma_params / n_train,
        "num_layers": len(points),
    }


def paper_params_m(arch: str, width: float) -> float | None:
    """The count (millions, 100-class head) the paper's architecture table quotes: only for its
    architectures at full width, where it describes the model built; None elsewhere."""
    facts = arch_facts(arch)
    return facts["params_m"] if facts and facts["params_m"] and width == 1.0 else None


def paper_parameter_count(arch: str, width: float, resolution: int, kwargs: dict | None = None) -> int:
    """P of gamma for a trained backbone: the paper's count for its architectures at full
    width, else the count with a GAMMA_HEAD_CLASSES-way head rounded to 0.01M (``kwargs``: a
    python: model's ``model.kwargs``)."""
    if paper_params_m(arch, width):
        return int(round(paper_params_m(arch, width) * 1e6))
    count = count_parameters(build_model(arch, GAMMA_HEAD_CLASSES, width, resolution, kwargs=kwargs))
    return int(round(count / 1e4) * 1e4)


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


def import_pretrained(params: dict, checkpoint: str, train_log: str, info_path: str) -> dict:
    """A published backbone in place of pretraining: load its weights (clear error when they do
    not fit the architecture) and write the same three outputs as ``pretrain``."""
    from tunnelscope.models.weights import load_pretrained, model_preprocessing

    spec = params["pretrained"]
    model = load_pretrained(spec, params["resolution"], key=f"pretrained.{params['arch']}.arch")
    check_forward_order(model, spec["probe_points"], params["resolution"])
    own = model_preprocessing(model, spec["arch"])
    used = {
        "mean": spec["mean"] or own["mean"],
        "std": spec["std"] or own["std"],
        "interpolation": spec["interpolation"],
        "crop_pct": spec["crop_pct"],
        "resolution": params["resolution"],
    }
    for key in ("interpolation", "crop_pct", "resolution"):
        if own[key] is None:  # a python: model declares none
            continue
        if used[key] != own[key] and not (key == "crop_pct" and math.isclose(used[key], own[key], abs_tol=1e-3)):
            setting = "grid.resolution" if key == "resolution" else f"pretrained.{params['arch']}.{key}"
            log.warning(
                "%s: %s %s differs from the model's own %s (set %s to match)",
                params["arch"],
                key,
                used[key],
                own[key],
                setting,
            )
    info = {
        **backbone_info(model, params, spec["arch"], spec["num_classes"], spec["n_train"], spec.get("gamma_params")),
        "final_train_acc": None,
        "final_val_acc": None,
        "test_acc": None,
        "source": spec.get("weights") or spec.get("hf_cache") or "download",
        "preprocessing": used,
        "own_preprocessing": own,
    }
    # The checkpoint names the real architecture, so embed rebuilds it like a trained cell's.
    save_backbone(
        model,
        checkpoint,
        {
            "params": {**params, "arch": spec["arch"]},
            "num_classes": spec["num_classes"],
            "mean": used["mean"],
            "std": used["std"],
            **({"kwargs": spec.get("kwargs", {})} if parse_python_arch(spec["arch"]) else {}),
        },
    )
    write_csv(pd.DataFrame(columns=["epoch", "train_loss", "train_acc", "val_acc", "lr", "seconds"]), train_log)
    write_json(info, info_path)
    log.info(
        "%s: %s with %d parameters, %d probe points", params["arch"], spec["arch"], info["params"], info["num_layers"]
    )
    return info


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
