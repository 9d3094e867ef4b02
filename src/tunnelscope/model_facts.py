"""The facts of a model that a study's budget needs without training it: forward FLOPs of one
image, pooled dims per probe point and parameters, measured on the meta device
(torch's FlopCounterMode) or read from the table shipped with the package for every setting of
the shipped presets (``python -m tunnelscope.budget`` regenerates it, budgeting every preset).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


def _patch_grid(model, resolution: int) -> int | None:
    """Tokens per side of a patch-embedding model (timm's patch_embed, torchvision's ViT), else None."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None) or getattr(model, "patch_size", None)
    if patch is None:
        return None
    return resolution // (patch[0] if isinstance(patch, (tuple, list)) else int(patch))


@dataclass(frozen=True)
class ModelFacts:
    """What the budget needs of one model setting: forward FLOPs of one image, the pooled dim of
    every probe point per pooling, the parameter count and the patch grid (None: no patches)."""

    flops: float
    dims: dict[str, tuple[int, ...]]
    params: int
    patch_grid: int | None

    def to_json(self) -> dict:
        return {
            "flops": self.flops,
            "dims": {k: list(v) for k, v in self.dims.items()},
            "params": self.params,
            "patch_grid": self.patch_grid,
        }

    @classmethod
    def from_json(cls, entry: dict) -> ModelFacts:
        return cls(
            entry["flops"], {k: tuple(v) for k, v in entry["dims"].items()}, entry["params"], entry["patch_grid"]
        )


# Model facts of every setting the shipped presets use, so that validating them builds no model
# (config/paper.yaml: 23 settings, ~0.5 s of CPU each on the meta device). Valid only for the
# fingerprint it records (costs_fingerprint); regenerate with ``python -m tunnelscope.budget``.
COSTS_TABLE = resources.files("tunnelscope").joinpath("resources", "model_costs.json")


_COST_SOURCES = ("models",)  # the package folders whose code decides FLOPs, dims and parameters
# ... but for these modules of it, which save, load and score models and build none
_COST_IGNORED = ("checkpoints.py", "evaluation.py")


SEEN: dict[str, ModelFacts] = {}  # every cacheable setting this process looked up (write_costs_table)


def costs_fingerprint() -> str:
    """SHA-256 of what the shipped facts depend on: the model code, the poolings, torch's minor
    version (its FLOP counter) and timm's version (its models), read without importing either."""
    from importlib.metadata import PackageNotFoundError, version

    from tunnelscope.registry import POOLINGS

    digest = hashlib.sha256(repr(POOLINGS).encode())
    root = Path(__file__).parent
    for folder in _COST_SOURCES:
        for path in sorted((root / folder).glob("*.py")):
            if path.name in _COST_IGNORED:
                continue
            digest.update(path.name.encode() + path.read_bytes())
    for package, parts in (("torch", 2), ("timm", 3)):
        try:
            digest.update(".".join(version(package).split("+")[0].split(".")[:parts]).encode())
        except PackageNotFoundError:
            digest.update(b"-")
    return digest.hexdigest()


@functools.cache
def _shipped_facts() -> dict[str, dict]:
    """The shipped table's entries, or none where its fingerprint is not this installation's."""
    try:
        table = json.loads(COSTS_TABLE.read_text())
    except (OSError, ValueError):
        return {}
    return table["facts"] if table.get("fingerprint") == costs_fingerprint() else {}


def facts_key(
    arch, classes, width, resolution, enumeration, poolings, side, kwargs_json, pretrained_json
) -> str | None:
    """The table key of a model setting; None for a python: model (its file may change any time).
    A published model is keyed by what builds it (its arch and head), not by where its weights are."""
    pretrained = json.loads(pretrained_json)
    source = pretrained["arch"] if pretrained else arch
    if source.startswith("python:"):
        return None
    built = {"arch": pretrained["arch"], "num_classes": pretrained["num_classes"]} if pretrained else None
    enumeration = list(enumeration) if isinstance(enumeration, tuple) else enumeration
    return json.dumps(
        [arch, classes, width, resolution, enumeration, sorted(poolings), side, json.loads(kwargs_json), built]
    )


def model_facts(
    arch: str,
    classes: int,
    width: float,
    resolution: int,
    enumeration: str | tuple[str, ...],
    poolings: tuple[str, ...],
    side: str,
    kwargs_json: str = "{}",
    pretrained_json: str = "null",
) -> ModelFacts:
    """ModelFacts of one setting (``enumeration``: a rule or a tuple of module names;
    ``kwargs_json``: a python: model's model.kwargs; ``pretrained_json``: a published backbone's
    entry; as JSON so that the cache can key on them): from the shipped table where it holds the
    setting, else measured once per process."""
    args = (arch, classes, width, resolution, enumeration, tuple(sorted(poolings)), side, kwargs_json, pretrained_json)
    key = facts_key(*args)
    entry = _shipped_facts().get(key)
    facts = ModelFacts.from_json(entry) if entry else _measure_facts(*args)
    if key is not None:
        SEEN[key] = facts
    return facts


@functools.cache
def _measure_facts(arch, classes, width, resolution, enumeration, poolings, side, kwargs_json, pretrained_json):
    """ModelFacts from one model build and one forward pass (on PyTorch's meta device where every
    operation has a meta kernel: shapes only, no weights initialised or multiplied)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tunnelscope.models.build import build_cell_model, probe_points
    from tunnelscope.models.capture import layer_shapes, pooled_dims

    def measure(device: str) -> ModelFacts:
        with torch.device(device):
            settings = {"width": width, "kwargs": json.loads(kwargs_json)}
            model = build_cell_model(arch, settings, classes, resolution, json.loads(pretrained_json)).eval()
            points = probe_points(model, side, enumeration)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(torch.zeros(1, 3, resolution, resolution))
            shapes = layer_shapes(model, points, resolution)
            dims = {pooling: tuple(pooled_dims(shapes, points, pooling)) for pooling in poolings}
            params = sum(p.numel() for p in model.parameters())
        return ModelFacts(float(counter.get_total_flops()), dims, params, _patch_grid(model, resolution))

    try:
        return measure("meta")
    except NotImplementedError:  # an operation without a meta kernel
        return measure("cpu")


def hashable(points):
    """A probe-point rule, or its list of module names as a tuple (a cache key)."""
    return tuple(points) if isinstance(points, list) else points
