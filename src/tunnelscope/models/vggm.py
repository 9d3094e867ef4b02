"""VGGm-11/-17 (and VGGm-dagger, VGG-19): 3x3 conv + BN + ReLU stacks; probe = each conv output."""

from __future__ import annotations

import torch
from torch import nn

from tunnelscope.models.common import init_conv_bn, scaled
from tunnelscope.models.points import ProbePoint

_VGG19_CLASSIFIER = (512, 512)  # hidden units of VGG-19's classifier, at CIFAR scale
_VGGM_STAGES = {
    # channels per conv, one list per stage; a max-pool closes every stage.
    "vggm11": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vggm17": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


class VGGm(nn.Module):
    """VGGm; with ``classifier_hidden`` the head is VGG's multi-layer classifier (Linear + ReLU
    per hidden size, then the output Linear), as Masarczyk et al.'s VGG-19."""

    def __init__(
        self,
        stages: list[list[int]],
        num_classes: int,
        width: float = 1.0,
        pool_first_stages: bool = True,
        classifier_hidden: tuple[int, ...] = (),
    ):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for s, stage in enumerate(stages):
            for channels in stage:
                out_ch = scaled(channels, width)
                layers += [
                    nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_ch),
                    nn.ReLU(inplace=True),
                ]
                in_ch = out_ch
            if pool_first_stages or s >= 2:
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = []
        for units in classifier_hidden:
            head += [nn.Linear(in_ch, scaled(units, width)), nn.ReLU(inplace=True)]
            in_ch = scaled(units, width)
        self.head = nn.Sequential(*head, nn.Linear(in_ch, num_classes)) if head else nn.Linear(in_ch, num_classes)
        self._init_weights()

    def _init_weights(self):
        init_conv_bn(self)
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


def _vggm(stages: str, dagger: bool):
    return lambda num_classes, width, resolution, drop_path: VGGm(
        _VGGM_STAGES[stages], num_classes, width, pool_first_stages=not dagger
    )


# arch name -> builder(num_classes, width, resolution, drop_path); models.build collects these.
BUILDERS = {
    "vggm11": _vggm("vggm11", dagger=False),
    "vggm17": _vggm("vggm17", dagger=False),
    "vggm11-dagger": _vggm("vggm11", dagger=True),
    "vggm17-dagger": _vggm("vggm17", dagger=True),
    "vgg19": lambda num_classes, width, resolution, drop_path: VGGm(
        _VGGM_STAGES["vggm17"], num_classes, width, classifier_hidden=_VGG19_CLASSIFIER
    ),
}
