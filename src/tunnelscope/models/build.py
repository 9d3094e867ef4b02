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
"""

from __future__ import annotations

import math
from dataclasses import replace

from torch import nn

from tunnelscope.models import resnet, vggm, vit
from tunnelscope.models.capture import layer_shapes
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
)

# The built-in architectures by name, from each family module's BUILDERS (MLPs are built from
# their name instead).
BUILDERS = {**vggm.BUILDERS, **resnet.BUILDERS, **vit.BUILDERS}


def build_model(
    arch: str, num_classes: int, width: float = 1.0, resolution: int = 224, drop_path: float = 0.1
) -> nn.Module:
    """A freshly initialised backbone. ``resolution`` matters for ViTs (positions, patches);
    ``drop_path`` is the stochastic depth rate of the paper ViTs (active in training only)."""
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
            f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}, mlpDEPTH-wWIDTH, timm/NAME, torchvision/NAME"
        )
    return BUILDERS[arch](num_classes, width, resolution, drop_path)


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
    is_tokens = len(first) == 2
    grid = math.isqrt(first[0] - points[0].prefix_tokens) if is_tokens else first[-1]
    return {
        "label": arch,
        "family": "vit" if is_tokens else "cnn",
        "arch_family": type(model).__name__.lower(),
        "depth": len(points),
        "stem": first_conv.kernel_size[0] if first_conv is not None else 0,
        "spatial_reduction": 1.0 if is_tokens else grid / resolution,
    }


# ---------------------------------------------------------------- published (pretrained) weights


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


def probe_points(model: nn.Module, side: str = "default", enumeration: str = "default") -> list[ProbePoint]:
    """The model's probe points; ``side`` "input"/"output" overrides where each is captured.

    ``enumeration``: "default" = the paper architectures' own rules, blocks for timm and
    torchvision models; "blocks" = ``enumerate_blocks``; "paper" = ``enumerate_paper``;
    "activations" = ``enumerate_activations``.
    """
    if enumeration == "blocks":
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
        points = enumerate_blocks(model)
    if side == "default":
        return points
    if side not in ("input", "output"):
        raise ValueError(f"capture side must be default, input or output, got {side!r}")
    return [replace(p, side=side) for p in points]
