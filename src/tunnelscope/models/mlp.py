"""Masarczyk et al.'s MLPs ``mlpDEPTH-wWIDTH``; probe = every hidden layer's output (after ReLU)."""

from __future__ import annotations

import torch
from torch import nn

from tunnelscope.models.points import ProbePoint


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
