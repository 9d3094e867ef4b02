"""Corrupted copies of an eval set: distribution shift without new data.

In the spirit of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019): each corruption has severities
1-5 whose parameters are that benchmark's where the operation maps onto a torchvision one
(severity 0 is the clean image). They are applied to the stored image (after the eval resize),
with spatial parameters scaled from CIFAR's 32 px to the image's shorter side, and every random
draw comes from a generator seeded by (seed, split, image index), so a copy is the same on every
run and on every thread.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

SEVERITIES = range(0, 6)

# Per severity 1..5. Noise sigma on [0, 1]; blur sigma at 32 px; contrast and brightness factors
# (CIFAR-10-C adds 0.05-0.3 to HSV value; torchvision scales brightness, so 1 + that amount);
# JPEG quality; pixelation: the fraction of the side kept before scaling back up.
PARAMETERS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (1.05, 1.1, 1.15, 1.2, 1.3),
    "jpeg": (80, 65, 58, 50, 40),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
}
_SPLIT_KEYS = {"train": 1, "test": 2}


def _noise(image: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    # By hand rather than TF.gaussian_noise: that draws from torch's global generator, which the
    # threads of a prepare job share, so its copies would depend on thread timing.
    x = image.float() / 255 + sigma * torch.randn(image.shape, generator=generator)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    sigma = sigma * min(image.shape[-2:]) / 32
    kernel = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])


def _pixelate(image: np.ndarray, keep: float) -> np.ndarray:
    # PIL's box filter down and up, as CIFAR-10-C pixelates.
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((max(1, int(w * keep)), max(1, int(h * keep))), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX))


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    # PIL's encoder: torchvision's image codecs are deprecated from 0.29 on.
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def corrupt(image: np.ndarray, corruption: str, severity: int, generator: torch.Generator | None = None) -> np.ndarray:
    """``image`` (h, w, 3) uint8 with ``corruption`` at ``severity`` (0: unchanged), as (h, w, 3) uint8."""
    if corruption not in PARAMETERS:
        raise ValueError(f"corruption {corruption!r}: not one of {', '.join(PARAMETERS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity}: must be 0-5")
    if severity == 0:
        return image
    value = PARAMETERS[corruption][severity - 1]
    if corruption == "jpeg":
        return _jpeg(image, int(value))
    if corruption == "pixelate":
        return _pixelate(image, value)
    # decoded images can be read-only views; torch wants a writable buffer (copied only then)
    x = torch.from_numpy(np.require(image, requirements=("C", "W"))).permute(2, 0, 1)
    if corruption == "gaussian_noise":
        out = _noise(x, value, generator or torch.Generator().manual_seed(0))
    elif corruption == "gaussian_blur":
        out = _blur(x, value)
    elif corruption == "contrast":
        out = TF.adjust_contrast(x, value)
    else:
        out = TF.adjust_brightness(x, value)
    return out.permute(1, 2, 0).contiguous().numpy()


def image_generator(seed: int, split: str, index: int) -> torch.Generator:
    """The generator of one image's draws: independent of the order images are made in."""
    state = np.random.SeedSequence([int(seed), _SPLIT_KEYS[split], int(index)]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
