"""Backbones and their probe points.

Paper architectures (Harun et al. 2024, exact at width 1.0; ``width`` scales channel counts):
- VGGm-11/-17: 3x3 conv + BN + ReLU stacks, 2x2 max-pools, global average pool, one Linear;
  VGGm-dagger drops the max-pools of the first two stages. Probe: each conv output (before BN).
- ResNet-18/-34: the ImageNet ResNet (7x7 stride-2 stem + max-pool at every resolution), with
  torchvision's module names so torchvision weights load. Probe: the input of the stem conv and
  of conv1, conv2 of every block (layer 1 = the normalised image).
- ViT-T/-T+: patch 8, width 192, 3 heads, no class token, fixed 2-D sin-cos positions, final
  LayerNorm -> token mean -> Linear. Probe: each block output through the final LayerNorm.

Masarczyk et al. (2023) architectures:
- VGG-19: VGGm-17's conv stack with VGG's three-layer classifier (512-512-C). Probe: each conv
  output (before BN), as VGGm.
- MLPs ``mlpDEPTH-wWIDTH``: the flattened image, DEPTH - 1 hidden layers (Linear + BatchNorm +
  ReLU) of WIDTH units, a Linear classifier. Probe: every hidden layer's output (after ReLU).

Any timm model (``timm/NAME``) or torchvision classification model (``torchvision/NAME``):
probe points are enumerated at block granularity, see ``enumerate_blocks``.

A model of your own (``python:FILE.py:FUNCTION``): FUNCTION(**kwargs) from FILE, see
``build_python_model``; its default probe points are its blocks too, and any model's probe points
may instead be a list of its module names (``named_points``).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import math
import sys
from dataclasses import replace
from pathlib import Path

from torch import nn

from tunnelscope.models import resnet, vggm, vit
from tunnelscope.models.capture import forward_order, layer_shapes
from tunnelscope.models.mlp import MLP
from tunnelscope.models.points import ProbePoint, enumerate_blocks, enumerate_paper
from tunnelscope.models.resnet import ResNet
from tunnelscope.models.vggm import VGGm
from tunnelscope.models.vit import _VIT_DEPTH, _vit_probe_points
from tunnelscope.registry import (
    ARCHS,
    PROBE_POINT_RULES,
    arch_facts,
    parse_mlp,
    parse_python_arch,
)

# The built-in architectures by name, from each family module's BUILDERS (MLPs are built from
# their name instead).
BUILDERS = {**vggm.BUILDERS, **resnet.BUILDERS, **vit.BUILDERS}


def build_model(
    arch: str,
    num_classes: int,
    width: float = 1.0,
    resolution: int = 224,
    drop_path: float = 0.1,
    kwargs: dict | None = None,
    key: str = "",
) -> nn.Module:
    """A freshly initialised backbone. ``resolution`` matters for ViTs (positions, patches);
    ``drop_path`` is the stochastic depth rate of the paper ViTs (active in training only).
    A ``python:`` model is called with ``kwargs`` (its ``model.kwargs``) and ``num_classes``; its
    errors name ``key``."""
    if parse_python_arch(arch) is not None:
        if width != 1.0:
            raise ValueError(
                f"{key or arch}: model.width scales the built-in architectures; a model of your own is built as its function builds it"
            )
        return build_python_model(arch, {**(kwargs or {}), "num_classes": num_classes}, key)
    if arch.startswith("timm/"):
        return _timm_model(arch.removeprefix("timm/"), num_classes, resolution)
    if arch.startswith("torchvision/"):
        import torchvision

        return torchvision.models.get_model(arch.removeprefix("torchvision/"), weights=None, num_classes=num_classes)
    mlp = parse_mlp(arch)
    if mlp is not None:
        if width != 1.0:
            raise ValueError(f"{arch}: an MLP's width is in its name; width multiplier {width} does not apply")
        return MLP(*mlp, num_classes, 3 * resolution * resolution)
    if arch not in ARCHS:
        raise ValueError(
            f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}, mlpDEPTH-wWIDTH, timm/NAME, torchvision/NAME, python:FILE.py:FUNCTION"
        )
    return BUILDERS[arch](num_classes, width, resolution, drop_path)


def build_python_model(arch: str, kwargs: dict, key: str = "") -> nn.Module:
    """A model of your own, ``python:FILE.py:FUNCTION``: FUNCTION(**kwargs) from FILE (absolute or
    relative to the working directory, whose own directory is put on ``sys.path`` so that it may
    import its neighbours). Any failure is a one-line ValueError that names ``key`` (the config
    key, e.g. ``pretrained.NAME.arch``) or else ``arch``."""
    where = key or arch
    path, function = parse_python_arch(arch)
    build = python_function(arch, key)
    call = f"{function}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        model = build(**kwargs)
    except Exception as exc:  # the user's code may raise anything
        raise ValueError(f"{where}: {call} from {path} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"{where}: {call} from {path} returned a {type(model).__name__}, not a torch.nn.Module")
    model.tunnelscope_arch = arch  # named in probe-point errors
    return model


def python_function(arch: str, key: str = ""):
    """The function of ``python:FILE.py:FUNCTION`` (errors name ``key`` or else ``arch``)."""
    path, function = parse_python_arch(arch)
    build = getattr(_python_module(key or arch, path), function, None)
    if not callable(build):
        raise ValueError(f"{key or arch}: {path} defines no function {function!r}")
    return build


def _python_module(where: str, path: str):
    """The module of a python: model's file, imported once per process (per file content)."""
    file = Path(path).resolve()
    if not file.is_file():
        raise ValueError(f"{where}: file {path} not found (relative paths start at the working directory {Path.cwd()})")
    source = file.read_bytes()
    name = f"tunnelscope_model_{hashlib.sha256(bytes(file) + source).hexdigest()[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    if str(file.parent) not in sys.path:
        sys.path.append(str(file.parent))
    sys.modules[name] = module  # before running it, as an import does (dataclasses look it up)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a syntax error, a failed import, anything the file runs
        del sys.modules[name]
        raise ValueError(f"{where}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def build_cell_model(
    arch: str, model: dict, num_classes: int, resolution: int, pretrained: dict | None = None, key: str = ""
) -> nn.Module:
    """A freshly initialised model of a cell: ``arch`` with the cell's ``model`` settings, or,
    for a published backbone, its ``pretrained`` entry's architecture (python: models called
    with the entry's kwargs as they are). Build errors name ``key``, the config key of ``arch``."""
    if pretrained is None:
        return build_model(arch, num_classes, model["width"], resolution, kwargs=model.get("kwargs"), key=key)
    if parse_python_arch(pretrained["arch"]) is not None:
        return build_python_model(pretrained["arch"], pretrained.get("kwargs", {}), key or f"pretrained.{arch}.arch")
    return build_model(pretrained["arch"], pretrained["num_classes"], 1.0, resolution)


def _timm_model(name: str, num_classes: int, resolution: int) -> nn.Module:
    import timm

    try:
        # Transformers need the input size for their position embeddings and patch grid.
        return timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=resolution)
    except TypeError:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    except RuntimeError as exc:
        raise ValueError(f"timm/{name}: {exc}") from exc


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(model: nn.Module, arch: str, resolution: int, points: list[ProbePoint] | None = None) -> dict:
    """Variables of a built model used by the analysis: family, depth, stem, spatial reduction.

    Built-in architectures: their facts as the released table codes them (registry.arch_facts).
    Others: depth = the number of probe points; spatial reduction phi = side of the first probe
    point's map / input side for CNNs, 1.0 for token models (as the paper codes its ViTs)."""
    facts = arch_facts(arch)
    if facts is not None:
        return facts
    points = points or probe_points(model)
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    shapes = layer_shapes(model, points, resolution)
    first = shapes[points[0].index]
    # (C, H, W) maps, (T, D) token sequences, or (D,) vectors (an MLP-like model, coded as MLPs are)
    family = {3: "cnn", 2: "vit"}.get(len(first), "mlp")
    grid = math.isqrt(first[0] - points[0].prefix_tokens) if family == "vit" else first[-1]
    return {
        "label": arch,
        "family": family,
        "arch_family": type(model).__name__.lower(),
        "depth": len(points),
        "stem": first_conv.kernel_size[0] if first_conv is not None else 0,
        "spatial_reduction": grid / resolution if family == "cnn" else 1.0,
    }


# ---------------------------------------------------------------- published (pretrained) weights


def _own_model_blocks(model: nn.Module) -> list[ProbePoint]:
    """The default points of a python: model: its blocks, or an error saying how to name modules."""
    try:
        return enumerate_blocks(model)
    except ValueError:
        arch = model.tunnelscope_arch
        raise ValueError(
            f"{arch}: no blocks found (modules whose class name ends in Block, Bottleneck or Residual); "
            f"list the modules to probe in probe_points, e.g. from tunnelscope layers {arch} --all-modules"
        ) from None


def enumerate_activations(model: nn.Module) -> list[ProbePoint]:
    """Post-activation probe points of the paper CNNs, the alternative to the released code's
    choice: VGGm and VGG-19 after each conv's BN + ReLU (instead of the conv output), ResNet after
    the stem ReLU and after relu1 and relu2 of every block (relu2 = the block output; instead of
    the conv inputs, so the image and the max-pool output drop out and the last block's output
    comes in). Paper ViTs and MLPs: their default probe points, which are post-activation."""
    if getattr(model, "tunnelscope_arch", "") in _VIT_DEPTH:
        return _vit_probe_points(model)
    if isinstance(model, MLP):  # its default probe points are post-ReLU already
        return model.probe_points()
    if not isinstance(model, (VGGm, ResNet)):
        raise ValueError(
            f"{type(model).__name__}: the activations enumeration is defined for the built-in architectures; use default, blocks or paper"
        )
    # The ReLUs of the feature extractor (VGG-19's classifier has its own, never probed).
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU) and not n.startswith("head")]
    return [ProbePoint(i + 1, n, "output") for i, n in enumerate(names)]


def named_points(model: nn.Module, names: list[str] | tuple[str, ...]) -> list[ProbePoint]:
    """Probe points at the outputs of the modules ``names`` (as ``model.named_modules()`` names
    them), in the listed order: layer i is the i-th name, so list them from input to output.
    An unknown name is a one-line ValueError with the nearest existing names."""
    modules = [n for n, _ in model.named_modules() if n]
    known = set(modules)
    label = getattr(model, "tunnelscope_arch", type(model).__name__)
    for name in names:
        if name not in known:
            nearest = difflib.get_close_matches(name, modules, n=3, cutoff=0.6)
            hint = (
                f"nearest: {', '.join(nearest)}" if nearest else f"tunnelscope layers {label} --all-modules lists them"
            )
            raise ValueError(f"probe_points: no module {name!r} in {label}; {hint}")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ValueError(f"probe_points: {', '.join(map(repr, repeated))} listed more than once")
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    return [ProbePoint(i + 1, n, "output", prefix_tokens=prefix) for i, n in enumerate(names)]


def check_forward_order(model: nn.Module, enumeration, resolution: int) -> None:
    """A list of module names must name modules of the model that a forward pass runs once each,
    in the order it runs them (layer i is the i-th name); a one-line ValueError otherwise. Rules
    are ordered by construction."""
    if not isinstance(enumeration, (list, tuple)):
        return
    names = list(enumeration)
    named_points(model, names)  # an unknown name: one line with the nearest names
    ran, calls = forward_order(model, names, resolution)
    repeated = [f"{n} ({calls[n]} times)" for n in names if calls[n] > 1]
    if repeated:
        # A hook sees every call; the capture keeps the first, which is not what the name says
        # (a ResNet block's shared ReLU runs after bn1 and after the residual sum).
        raise ValueError(
            f"probe_points: {', '.join(repeated)} runs more than once per forward pass; name a module that runs once (its parent block, say)"
        )
    if ran != names:
        missing = [n for n in names if n not in ran]
        why = f"{', '.join(missing)} never run" if missing else f"a forward pass runs them as {', '.join(ran)}"
        raise ValueError(f"probe_points: layer i is the i-th name, so list them from input to output; {why}")


def probe_points(
    model: nn.Module, side: str = "default", enumeration: str | list[str] | tuple[str, ...] = "default"
) -> list[ProbePoint]:
    """The model's probe points; ``side`` "input"/"output" overrides where each is captured.

    ``enumeration``: "default" = the paper architectures' own rules, blocks for timm,
    torchvision and python: models; "blocks" = ``enumerate_blocks``; "paper" =
    ``enumerate_paper``; "activations" = ``enumerate_activations``; or a list of module names
    (``named_points``).
    """
    if isinstance(enumeration, (list, tuple)):
        points = named_points(model, enumeration)
    elif enumeration == "blocks":
        points = enumerate_blocks(model)
    elif enumeration == "paper":
        points = enumerate_paper(model)
    elif enumeration == "activations":
        points = enumerate_activations(model)
    elif enumeration != "default":
        raise ValueError(f"probe point enumeration must be one of {', '.join(PROBE_POINT_RULES)}, got {enumeration!r}")
    elif hasattr(model, "probe_points"):
        points = model.probe_points()
    elif getattr(model, "tunnelscope_arch", "") in _VIT_DEPTH:
        points = _vit_probe_points(model)
    else:
        own = str(getattr(model, "tunnelscope_arch", "")).startswith("python:")
        points = _own_model_blocks(model) if own else enumerate_blocks(model)
    if side == "default":
        return points
    if side not in ("input", "output"):
        raise ValueError(f"capture side must be default, input or output, got {side!r}")
    return [replace(p, side=side) for p in points]
