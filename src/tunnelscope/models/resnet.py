"""ResNet-18/-34 with torchvision's module names; probe = the input of the stem conv and of each block conv."""

from __future__ import annotations

import re

from torch import nn

from tunnelscope.models.common import init_conv_bn, scaled
from tunnelscope.models.points import ProbePoint

_RESNET_BLOCKS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}


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
        chans = [scaled(c, width) for c in (64, 128, 256, 512)]
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
        init_conv_bn(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))

    def probe_points(self) -> list[ProbePoint]:
        """Inputs of the stem conv and of conv1/conv2 of every block (downsample convs excluded)."""
        names = ["conv1"] + [n for n, m in self.named_modules() if re.fullmatch(r"layer\d\.\d+\.conv[12]", n)]
        return [ProbePoint(i + 1, n, "input") for i, n in enumerate(names)]


# arch name -> builder(num_classes, width, resolution, drop_path); models.build collects these.
BUILDERS = {
    name: (lambda num_classes, width, resolution, drop_path, blocks=blocks: ResNet(blocks, num_classes, width))
    for name, blocks in _RESNET_BLOCKS.items()
}
