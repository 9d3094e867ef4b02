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

import contextlib
import math
import re
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn

from .config import ARCHS, DEFAULT_TRANSFORM, ENUMERATIONS, IMAGENET_MEAN, IMAGENET_STD, arch_facts, parse_mlp

_VGGM_STAGES = {
    # channels per conv, one list per stage; a max-pool closes every stage.
    "vggm11": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vggm17": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}
_VGG19_CLASSIFIER = (512, 512)  # hidden units of VGG-19's classifier, at CIFAR scale
_RESNET_BLOCKS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}
_VIT_DEPTH = {"vit-t": 12, "vit-t-plus": 18}


@dataclass(frozen=True)
class ProbePoint:
    index: int  # 1..L
    name: str  # module name in model.named_modules()
    side: str  # "output" or "input" of that module
    post: str = ""  # module applied to the captured tensor before pooling (ViT: final norm)
    prefix_tokens: int = 0  # leading non-patch tokens (class/register tokens) of a token sequence
    call: int = 0  # which call of the module within one forward (for modules run more than once)


def _init_conv_bn(model: nn.Module) -> None:
    """Conv: Kaiming-normal (fan_out); BN: weight 1, bias 0 (as the papers' code and torchvision)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class VGGm(nn.Module):
    """VGGm; with ``classifier_hidden`` the head is VGG's multi-layer classifier (Linear + ReLU
    per hidden size, then the output Linear), as Masarczyk et al.'s VGG-19."""

    def __init__(self, stages: list[list[int]], num_classes: int, width: float = 1.0, pool_first_stages: bool = True, classifier_hidden: tuple[int, ...] = ()):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for s, stage in enumerate(stages):
            for channels in stage:
                out_ch = _scaled(channels, width)
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
                in_ch = out_ch
            if pool_first_stages or s >= 2:
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = []
        for units in classifier_hidden:
            head += [nn.Linear(in_ch, _scaled(units, width)), nn.ReLU(inplace=True)]
            in_ch = _scaled(units, width)
        self.head = nn.Sequential(*head, nn.Linear(in_ch, num_classes)) if head else nn.Linear(in_ch, num_classes)
        self._init_weights()

    def _init_weights(self):
        _init_conv_bn(self)
        linears = [m for m in self.modules() if isinstance(m, nn.Linear)]
        for hidden in linears[:-1]:
            nn.init.kaiming_normal_(hidden.weight, nonlinearity="relu")
            nn.init.zeros_(hidden.bias)
        nn.init.xavier_uniform_(linears[-1].weight)
        nn.init.zeros_(linears[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))

    def probe_points(self) -> list[ProbePoint]:
        """Each Conv2d output (before BN), in forward order."""
        names = [n for n, m in self.named_modules() if isinstance(m, nn.Conv2d)]
        return [ProbePoint(i + 1, n, "output") for i, n in enumerate(names)]


class MLPBlock(nn.Module):
    """One hidden layer: Linear (no bias: BatchNorm follows) + BatchNorm + ReLU. The ReLU is not
    in place, so the block output a probe captures is a tensor no later layer writes to."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.norm = nn.BatchNorm1d(out_features)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.norm(self.linear(x)))


class MLP(nn.Module):
    """``depth - 1`` hidden layers of ``width`` units on the flattened image, then a Linear
    classifier. It takes images like every backbone (N, C, H, W) and flattens them itself."""

    def __init__(self, depth: int, width: int, num_classes: int, in_features: int):
        super().__init__()
        sizes = [in_features] + [width] * (depth - 1)
        self.hidden = nn.Sequential(*[MLPBlock(a, b) for a, b in zip(sizes, sizes[1:])])
        self.head = nn.Linear(width, num_classes)
        for block in self.hidden:
            nn.init.kaiming_normal_(block.linear.weight, nonlinearity="relu")  # fan_in: keeps the forward scale
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x.flatten(1)))

    def probe_points(self) -> list[ProbePoint]:
        """Each hidden layer's output (after ReLU), in forward order."""
        return [ProbePoint(i + 1, f"hidden.{i}", "output") for i in range(len(self.hidden))]


class BasicBlock(nn.Module):
    """torchvision's BasicBlock with separate ReLUs, so no module runs twice per forward."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class ResNet(nn.Module):
    def __init__(self, blocks: list[int], num_classes: int, width: float = 1.0):
        super().__init__()
        chans = [_scaled(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, chans[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(chans[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = chans[0]
        for i, (n, ch) in enumerate(zip(blocks, chans)):
            stage = [BasicBlock(in_ch if b == 0 else ch, ch, 2 if (b == 0 and i > 0) else 1) for b in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            in_ch = ch
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        _init_conv_bn(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))

    def probe_points(self) -> list[ProbePoint]:
        """Inputs of the stem conv and of conv1/conv2 of every block (downsample convs excluded)."""
        names = ["conv1"] + [n for n, m in self.named_modules() if re.fullmatch(r"layer\d\.\d+\.conv[12]", n)]
        return [ProbePoint(i + 1, n, "input") for i, n in enumerate(names)]


def _paper_vit(depth: int, num_classes: int, resolution: int, width: float = 1.0, drop_path: float = 0.1) -> nn.Module:
    from timm.layers import build_sincos2d_pos_embed
    from timm.models.vision_transformer import VisionTransformer

    heads = 3
    dim = heads * max(1, round(64 * width))  # width scales the head dim, keeping 3 heads
    if resolution % 8:
        raise ValueError(f"ViT with patch 8 needs a resolution divisible by 8, got {resolution}")
    model = VisionTransformer(
        img_size=resolution,
        patch_size=8,
        num_classes=num_classes,
        global_pool="avg",
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        class_token=False,
        fc_norm=False,  # final LayerNorm on every token, then the mean, as the papers' ViTs
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        drop_path_rate=drop_path,
    )
    # Fixed 2-D sin-cos positions: a buffer, so it is neither trained nor counted as a parameter.
    grid = resolution // 8
    del model.pos_embed
    model.register_buffer("pos_embed", build_sincos2d_pos_embed([grid, grid], dim).unsqueeze(0), persistent=False)
    return model


def _vit_probe_points(model: nn.Module) -> list[ProbePoint]:
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    return [ProbePoint(i + 1, f"blocks.{i}", "output", post="norm", prefix_tokens=prefix) for i in range(len(model.blocks))]


# Block classes of timm and torchvision CNNs and transformers; see enumerate_blocks.
_BLOCK_CLASS = re.compile(r"(Block|Bottleneck|InvertedResidual|DepthwiseSeparableConv|EdgeResidual|MBConv|Residual|CNBlock)$")


def enumerate_blocks(model: nn.Module) -> list[ProbePoint]:
    """Probe points at block granularity for any timm or torchvision model.

    A block is a module whose class name ends in Block, Bottleneck, InvertedResidual,
    DepthwiseSeparableConv, EdgeResidual, MBConv or Residual (ResNet blocks, ConvNeXt blocks,
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
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels == module.out_channels


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
        raise ValueError(f"{type(model).__name__}: the activations enumeration is defined for the built-in architectures; use default, blocks or paper")
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
        raise ValueError(f"probe point enumeration must be one of {', '.join(ENUMERATIONS)}, got {enumeration!r}")
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


def build_model(arch: str, num_classes: int, width: float = 1.0, resolution: int = 224, drop_path: float = 0.1) -> nn.Module:
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
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}, mlpDEPTH-wWIDTH, timm/NAME, torchvision/NAME")
    if arch == "vgg19":
        return VGGm(_VGGM_STAGES["vggm17"], num_classes, width, classifier_hidden=_VGG19_CLASSIFIER)
    if arch.startswith("vggm"):
        base = arch.removesuffix("-dagger")
        return VGGm(_VGGM_STAGES[base], num_classes, width, pool_first_stages=not arch.endswith("-dagger"))
    if arch in _RESNET_BLOCKS:
        return ResNet(_RESNET_BLOCKS[arch], num_classes, width)
    model = _paper_vit(_VIT_DEPTH[arch], num_classes, resolution, width, drop_path)
    model.tunnelscope_arch = arch
    return model


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

    Built-in architectures: their facts as the released table codes them (config.arch_facts).
    Others: depth = the number of probe points; spatial reduction phi = side of the first probe
    point's map / input side for CNNs, 1.0 for token models (as the paper codes its ViTs)."""
    facts = arch_facts(arch)
    if facts is not None:
        return facts
    points = points or probe_points(model)
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    from .extract import layer_shapes

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


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a PyTorch checkpoint, loaded without running code.

    Wrappers ``{"state_dict": ...}`` / ``{"model": ...}`` and DistributedDataParallel's
    ``module.`` prefix are unwrapped, as found in most released checkpoints.
    """
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for unreadable files
        raise ValueError(f"{path}: not a readable safetensors file or PyTorch state dict ({exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _classifier_prefix(model: nn.Module) -> str | None:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] + "." if linears else None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Load ``state`` into ``model`` or say in one line why it does not fit.

    Only the classifier may be missing (self-supervised checkpoints have none); every other
    parameter and buffer must be present with the model's shape, and nothing may be left over.
    """
    own = model.state_dict()
    head = _classifier_prefix(model)
    missing = [k for k in own if k not in state and not (head and k.startswith(head))]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model" for k in state if k in own and state[k].shape != own[k].shape]
    problems = []
    if wrong:
        hint = " (num_classes must match the checkpoint's classifier)" if head and wrong[0].startswith(head) else ""
        problems.append(f"{len(wrong)} shape mismatches, first: {wrong[0]}{hint}")
    if missing:
        problems.append(f"{len(missing)} missing, first: {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected, first: {unexpected[0]}")
    if problems:
        raise ValueError(f"{source} does not fit {arch}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)


def load_pretrained(spec: dict, resolution: int) -> nn.Module:
    """``spec['arch']`` with published weights: a local file, a local Hugging Face cache, or
    (only with ``download: true``) a download through timm or torchvision."""
    arch = spec["arch"]
    if spec.get("weights"):
        model = build_model(arch, spec["num_classes"], 1.0, resolution)
        state = {k: v for k, v in read_state_dict(spec["weights"]).items() if not k.startswith(tuple(spec.get("ignore_prefixes", ())))}
        load_weights(model, state, spec["weights"], arch)
        return model.eval()
    name = arch.split("/", 1)[1]
    if arch.startswith("timm/"):
        import timm

        def create(**size):
            return timm.create_model(name, pretrained=True, num_classes=spec["num_classes"], cache_dir=spec.get("hf_cache"), **size)

        try:
            with _hub_offline(not spec.get("download")):
                try:
                    return create(img_size=resolution).eval()  # transformers: positions for this size
                except TypeError:
                    return create().eval()
        except Exception as exc:  # hub and file errors come in many types
            where = spec.get("hf_cache") or "the default Hugging Face cache"
            raise ValueError(f"{arch}: no weights found in {where} ({type(exc).__name__}: {exc})") from exc
    import torchvision

    return torchvision.models.get_model(name, weights="DEFAULT").eval()


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Inside, Hugging Face hub requests fail at once and files come from the cache only.

    huggingface_hub reads this flag at call time, so unlike the HF_HUB_OFFLINE environment
    variable it holds even when the library was imported before.
    """
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def model_preprocessing(model: nn.Module, arch: str) -> dict:
    """The normalisation, interpolation and crop a published model was evaluated with."""
    if arch.startswith("timm/"):
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        return {
            "mean": list(cfg.get("mean", IMAGENET_MEAN)),
            "std": list(cfg.get("std", IMAGENET_STD)),
            "interpolation": cfg.get("interpolation", DEFAULT_TRANSFORM["interpolation"]),
            "crop_pct": float(cfg.get("crop_pct", DEFAULT_TRANSFORM["crop_pct"])),
            "resolution": int(cfg.get("input_size", (3, 224, 224))[-1]),
        }
    import torchvision

    transform = torchvision.models.get_model_weights(arch.split("/", 1)[1]).DEFAULT.transforms()
    return {
        "mean": list(transform.mean),
        "std": list(transform.std),
        "interpolation": transform.interpolation.value,
        "crop_pct": transform.crop_size[0] / transform.resize_size[0],
        "resolution": int(transform.crop_size[0]),
    }
