"""Backbones and their probe points.

VGGm follows PROTOCOL.md exactly at width 1.0: 3x3 conv + BN + ReLU stacks, 2x2 max-pools,
global average pool, one Linear head; VGGm-dagger drops the max-pools of the first two stages.
``width`` scales every channel count so small studies run on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import ARCHS

_VGGM_STAGES = {
    # channels per conv, one list per stage; a max-pool closes every stage.
    "vggm11": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vggm17": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


@dataclass(frozen=True)
class ProbePoint:
    index: int  # 1..L
    name: str  # module name in model.named_modules()
    side: str  # "output" or "input" of that module


class VGGm(nn.Module):
    def __init__(self, stages: list[list[int]], num_classes: int, width: float = 1.0, pool_first_stages: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for s, stage in enumerate(stages):
            for channels in stage:
                out_ch = max(1, round(channels * width))
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
                in_ch = out_ch
            if pool_first_stages or s >= 2:
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_ch, num_classes)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))

    def probe_points(self) -> list[ProbePoint]:
        """Each Conv2d output (before BN), in forward order."""
        names = [n for n, m in self.named_modules() if isinstance(m, nn.Conv2d)]
        return [ProbePoint(i + 1, n, "output") for i, n in enumerate(names)]


def build_model(arch: str, num_classes: int, width: float = 1.0) -> nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    base = arch.removesuffix("-dagger")
    return VGGm(_VGGM_STAGES[base], num_classes, width, pool_first_stages=not arch.endswith("-dagger"))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
