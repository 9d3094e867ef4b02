"""Corrupted copies of an eval set: distribution shift without new data.

CIFAR-10-C's corruptions (Hendrycks & Dietterich, ICLR 2019), ported from its published
generator (make_cifar_c.py) with its parameters for severities 1-5 (severity 0 is the clean
image): each works on the image scaled to [0, 1] in float64 and ends, as that script does, with
np.uint8 of the clipped result times 255 (truncation, not rounding). Names here and there:
gaussian_noise, gaussian_blur (one of CIFAR-10-C's four extra corruptions), contrast,
brightness, jpeg (jpeg_compression) and pixelate. No other corruption is offered; one added later
that CIFAR-10-C does not define belongs outside ``PARAMETERS`` under a name that says so.

The one departure: they are applied to the stored image (after the eval resize), so the blur's
sigma is scaled from CIFAR's 32 px to the image's shorter side (pixelation's kept fraction is
scale-free already); at 32 px both are CIFAR-10-C's exactly. Every random draw comes from a
generator seeded by (seed, split, image index), so a copy is the same on every run and thread.

Not the ``imagecorruptions`` package: it implements ImageNet-C's parameters (224 px images),
not CIFAR-10-C's, and needs OpenCV and scikit-image. tests/test_corruptions.py checks this port
against the published formulas (skimage's HSV round trip by colorsys, its Gaussian filter by an
explicit convolution).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

SEVERITIES = range(0, 6)

# CIFAR-10-C's parameters per severity 1..5: noise sigma and blur sigma (at 32 px) on [0, 1];
# contrast: the factor on each channel's distance from its mean; brightness: added to HSV value;
# JPEG quality; pixelation: the fraction of the side kept before scaling back up.
PARAMETERS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "jpeg": (80, 65, 58, 50, 40),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
}
_SPLIT_KEYS = {"train": 1, "test": 2}
# skimage.filters.gaussian's defaults, which CIFAR-10-C's blur uses
_BLUR_MODE, _BLUR_TRUNCATE = "nearest", 4.0


def _unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / 255


def _to_uint8(x: np.ndarray) -> np.ndarray:
    # CIFAR-10-C: np.uint8(np.clip(x, 0, 1) * 255), which truncates
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def _noise(image: np.ndarray, sigma: float, generator: torch.Generator) -> np.ndarray:
    # torch's generator, not numpy's global one: a prepare job's threads share that, so its copies
    # would depend on thread timing. float32 draws in channel-plane order: the draws of the copies
    # made before this port, so a copy changes only by its truncation.
    h, w, c = image.shape
    draws = torch.randn((c, h, w), generator=generator).permute(1, 2, 0).double().numpy()
    return _to_uint8(_unit(image) + sigma * draws)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    sigma = sigma * min(image.shape[:2]) / 32
    return _to_uint8(gaussian_filter(_unit(image), (sigma, sigma, 0), mode=_BLUR_MODE, truncate=_BLUR_TRUNCATE))


def _contrast(image: np.ndarray, factor: float) -> np.ndarray:
    x = _unit(image)
    means = x.mean(axis=(0, 1), keepdims=True)
    return _to_uint8((x - means) * factor + means)


def _brightness(image: np.ndarray, amount: float) -> np.ndarray:
    # CIFAR-10-C adds ``amount`` to the HSV value V = max(r, g, b), clipped to 1, and converts back.
    # Hue and saturation fixed, every channel is V times a function of them: the result is the
    # pixel scaled by V'/V, and a black pixel (V = 0, saturation 0) the grey V'.
    x = _unit(image)
    value = x.max(axis=2, keepdims=True)
    brighter = np.minimum(value + amount, 1)
    scale = np.divide(brighter, value, out=np.zeros_like(value), where=value > 0)
    # the largest channel is V' itself (x * V'/V can fall an ulp short of it, and truncate a level)
    return _to_uint8(np.where((value > 0) & (x < value), x * scale, brighter))


def _pixelate(image: np.ndarray, keep: float) -> np.ndarray:
    # PIL's box filter down and up, as CIFAR-10-C pixelates.
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((max(1, int(w * keep)), max(1, int(h * keep))), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX))


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    # PIL's encoder, as CIFAR-10-C's (torchvision's image codecs are deprecated from 0.29 on).
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
    if corruption == "gaussian_noise":
        return _noise(image, value, generator or torch.Generator().manual_seed(0))
    apply = {
        "gaussian_blur": _blur,
        "contrast": _contrast,
        "brightness": _brightness,
        "jpeg": lambda x, q: _jpeg(x, int(q)),
        "pixelate": _pixelate,
    }[corruption]
    return apply(image, value)


def image_generator(seed: int, split: str, index: int) -> torch.Generator:
    """The generator of one image's draws: independent of the order images are made in."""
    state = np.random.SeedSequence([int(seed), _SPLIT_KEYS[split], int(index)]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
