"""Building blocks the convolutional families share: width scaling and initialisation."""

from __future__ import annotations

from torch import nn


def init_conv_bn(model: nn.Module) -> None:
    """Conv: Kaiming-normal (fan_out); BN: weight 1, bias 0 (as the papers' code and torchvision)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))
