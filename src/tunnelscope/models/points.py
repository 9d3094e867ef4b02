"""Probe points: where a backbone's layers are captured, and the generic enumerations.

``enumerate_blocks`` (timm and torchvision models) and ``enumerate_paper`` (the released code's
rule) work on any module tree; each built-in family declares its own default points.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ProbePoint:
    index: int  # 1..L
    name: str  # module name in model.named_modules()
    side: str  # "output" or "input" of that module
    post: str = ""  # module applied to the captured tensor before pooling (ViT: final norm)
    prefix_tokens: int = 0  # leading non-patch tokens (class/register tokens) of a token sequence


# Block classes of timm and torchvision CNNs and transformers; see enumerate_blocks.
_BLOCK_CLASS = re.compile(r"(Block|Bottleneck|DepthwiseSeparableConv|MBConv|Residual)$")


def enumerate_blocks(model: nn.Module) -> list[ProbePoint]:
    """Probe points at block granularity for any timm or torchvision model.

    A block is a module whose class name ends in Block, Bottleneck, DepthwiseSeparableConv,
    MBConv or Residual (InvertedResidual, EdgeResidual: ResNet blocks, ConvNeXt blocks,
    MobileNet/EfficientNet blocks, transformer blocks, ...); only the outermost such modules
    count, in forward order, and each is captured at its output. Models with a ``blocks``
    attribute and prefix tokens (class/register tokens) record them so pooling can skip them.
    """
    names: list[str] = []
    for name, module in model.named_modules():
        if name and _BLOCK_CLASS.search(type(module).__name__) and not any(name.startswith(p + ".") for p in names):
            names.append(name)
    if not names:
        raise ValueError(f"found no blocks in {type(model).__name__}; give probe points explicitly")
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    return [ProbePoint(i + 1, n, "output", prefix_tokens=prefix) for i, n in enumerate(names)]


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


# Convs on a residual shortcut (torchvision/timm ``downsample``, some timm ``shortcut``).
_SHORTCUT = re.compile(r"(^|\.)(downsample|shortcut)(\.|$)")


def enumerate_paper(model: nn.Module) -> list[ProbePoint]:
    """Probe points of Harun et al. (2024, Sec. 4.2) for published ImageNet backbones.

    Transformers (a ``blocks`` list of modules with attention): every block's output, through
    the final norm as for the paper ViTs. ConvNeXt-like CNNs: the stem conv and each block's
    depthwise conv. Other CNNs: every Conv2d but the projection shortcuts, as the paper probes
    its own ResNets. Outputs, in module order. For the paper's eight models this gives 12 per
    ViT-B, 49 per ResNet-50 and 37 per ConvNeXt-B: 220 positions, its 1,980 probes over 9 sets.
    """
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and any(hasattr(b, "attn") for b in blocks):
        prefix = int(getattr(model, "num_prefix_tokens", 0))
        post = "norm" if isinstance(getattr(model, "norm", None), nn.LayerNorm) else ""
        return [ProbePoint(i + 1, f"blocks.{i}", "output", post=post, prefix_tokens=prefix) for i in range(len(blocks))]
    encoder = [n for n, m in model.named_modules() if re.fullmatch(r"encoder\.layers\.encoder_layer_\d+", n)]
    if encoder:  # torchvision VisionTransformer: class token first, final norm ``encoder.ln``
        return [ProbePoint(i + 1, n, "output", post="encoder.ln", prefix_tokens=1) for i, n in enumerate(encoder)]
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__}: the paper enumeration needs transformer blocks or Conv2d layers")
    if any(type(m).__name__ in ("ConvNeXtBlock", "CNBlock") for m in model.modules()):
        chosen = [convs[0][0]] + [n for n, m in convs[1:] if _is_depthwise(m)]
    else:
        chosen = [n for n, _ in convs if not _SHORTCUT.search(n)]
    return [ProbePoint(i + 1, n, "output") for i, n in enumerate(chosen)]
