"""A cell's backbone facts (cell.json), for trained and published backbones alike, and published
backbones imported as cells in place of pretraining."""

from __future__ import annotations

import logging
import math

import pandas as pd

from tunnelscope.io import write_csv, write_json
from tunnelscope.models.build import (
    build_model,
    check_forward_order,
    count_parameters,
    describe,
    probe_points,
)
from tunnelscope.models.checkpoints import save_backbone
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
