"""Procedural image datasets: the offline default needs no download.

Each class is a seeded *prototype*: a closed shape whose outline is a radial function
r(theta) = 1 + sum_k a_k cos(k theta + phi_k), filled with a striped texture of class-specific
frequency and orientation, in a class-specific pair of hues. Each image draws nuisances around
its prototype: position, scale, rotation, hue/brightness jitter, a cluttered background
(low-frequency colour waves plus distractor blobs) and pixel noise. Stripes and outline rotate
with the object, so a classifier has to learn spatial features, not a colour histogram.

Families differ in how prototypes are drawn, so they make natural OOD sets for each other:
- ``shapes``: smooth blobs and stars (harmonics 2..5), fine stripes;
- ``glyphs``: spiky outlines (harmonics 5..9), two crossed gratings, darker backgrounds.
Disjoint class ranges of one family (``class_offset``) give further OOD sets.

Written by hand with numpy because every image is a closed-form function of pixel
coordinates: rendering a whole class at once as (n, H, W) arrays is fast (see
``benchmarks/bench_synthetic.py``) and bitwise reproducible from the seed alone.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from tunnelscope.registry import SYNTHETIC_FAMILIES

_SPLIT_CODES = {"train": 1, "test": 2}
_N_HARMONICS = 4


@dataclass(frozen=True)
class Prototype:
    """The fixed, class-defining parameters of one synthetic class."""

    harmonic_orders: np.ndarray  # (K,) int
    harmonic_amps: np.ndarray  # (K,)
    harmonic_phases: np.ndarray  # (K,)
    stripe_freq: float
    stripe_angle: float
    cross_freq: float  # 0 = single grating
    fg_hue: float
    stripe_hue: float
    bg_dark: bool


def _family_code(family: str) -> int:
    if family not in SYNTHETIC_FAMILIES:
        raise ValueError(f"unknown synthetic family {family!r}; known: {', '.join(SYNTHETIC_FAMILIES)}")
    return zlib.crc32(family.encode())


def prototype(family: str, class_index: int) -> Prototype:
    """The prototype of class ``class_index`` (any non-negative int) of ``family``.

    Independent of how many classes a dataset asks for, so class 7 is the same object in a
    10-class and a 1000-class dataset.
    """
    rng = np.random.default_rng([_family_code(family), class_index])
    if family == "shapes":
        orders = rng.choice(np.arange(2, 6), size=_N_HARMONICS, replace=True)
        amps = rng.uniform(0.0, 0.3, size=_N_HARMONICS)
        freq, cross = rng.uniform(2.0, 5.0), 0.0
        bg_dark = False
    else:
        orders = rng.choice(np.arange(5, 10), size=_N_HARMONICS, replace=True)
        amps = rng.uniform(0.05, 0.35, size=_N_HARMONICS)
        freq, cross = rng.uniform(1.5, 4.0), rng.uniform(1.5, 4.0)
        bg_dark = True
    return Prototype(
        harmonic_orders=orders.astype(np.float32),
        harmonic_amps=amps.astype(np.float32),
        harmonic_phases=rng.uniform(0, 2 * np.pi, size=_N_HARMONICS).astype(np.float32),
        stripe_freq=float(freq),
        stripe_angle=float(rng.uniform(0, np.pi)),
        cross_freq=float(cross),
        fg_hue=float(rng.uniform(0, 1)),
        stripe_hue=float(rng.uniform(0, 1)),
        bg_dark=bg_dark,
    )


def _hue_to_rgb(hue: np.ndarray) -> np.ndarray:
    """Fully saturated colour of each hue in [0, 1): (..., 3) in [0, 1]."""
    k = (np.asarray(hue)[..., None] * 6.0 + np.array([0.0, 4.0, 2.0])) % 6.0
    return np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def render_class(
    proto: Prototype, n: int, resolution: int, rng: np.random.Generator, noise: float = 0.06
) -> np.ndarray:
    """Render ``n`` images of one class: uint8 array (n, R, R, 3)."""
    r = resolution
    f32 = np.float32
    # Pixel centres in [-1, 1].
    axis = (np.arange(r, dtype=f32) + 0.5) / r * 2.0 - 1.0
    ys, xs = axis[None, :, None], axis[None, None, :]

    # Per-image nuisances.
    cx, cy = (rng.uniform(-0.35, 0.35, size=(2, n, 1, 1))).astype(f32)
    scale = rng.uniform(0.32, 0.6, size=(n, 1, 1)).astype(f32)
    rot = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(f32)
    hue_jitter = rng.normal(0, 0.06, size=n)
    brightness = rng.uniform(0.7, 1.0, size=(n, 1, 1, 1)).astype(f32)

    # Object frame: translate, rotate, scale.
    dx, dy = xs - cx, ys - cy
    cos, sin = np.cos(rot), np.sin(rot)
    u = (cos * dx + sin * dy) / scale
    v = (-sin * dx + cos * dy) / scale
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    radius = np.ones_like(theta)
    for order, amp, phase in zip(proto.harmonic_orders, proto.harmonic_amps, proto.harmonic_phases):
        radius += amp * np.cos(order * theta + phase)
    # Soft edge (one pixel wide) so shapes stay smooth at every resolution.
    edge = 2.0 / (r * scale)
    inside = np.clip((radius - rho) / edge + 0.5, 0.0, 1.0)[..., None]

    angle = proto.stripe_angle
    grating = np.sin(np.pi * proto.stripe_freq * (u * np.cos(angle) + v * np.sin(angle)))
    if proto.cross_freq:
        grating = grating * np.sin(np.pi * proto.cross_freq * (-u * np.sin(angle) + v * np.cos(angle)))
    stripe = (grating > 0).astype(f32)[..., None]
    fg = _hue_to_rgb(proto.fg_hue + hue_jitter).astype(f32)[:, None, None, :]
    st = _hue_to_rgb(proto.stripe_hue + hue_jitter).astype(f32)[:, None, None, :]
    obj = (fg * (1 - stripe) + st * stripe) * brightness

    bg = _background(n, r, xs, ys, rng, dark=proto.bg_dark)
    img = bg * (1 - inside) + obj * inside
    img += rng.normal(0, noise, size=img.shape).astype(f32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _background(n, r, xs, ys, rng, dark: bool) -> np.ndarray:
    """Clutter: a random low-frequency colour wave plus two distractor discs per image."""
    f32 = np.float32
    freq = rng.uniform(0.5, 2.0, size=(n, 1, 1, 1)).astype(f32)
    ang = rng.uniform(0, 2 * np.pi, size=(n, 1, 1, 1)).astype(f32)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1, 1)).astype(f32)
    base = _hue_to_rgb(rng.uniform(0, 1, size=n)).astype(f32)[:, None, None, :]
    level = 0.15 if dark else 0.45
    wave = np.sin(np.pi * freq * (xs[..., None] * np.cos(ang) + ys[..., None] * np.sin(ang)) + phase)
    bg = level + 0.25 * wave * base
    for _ in range(2):
        px, py = rng.uniform(-1, 1, size=(2, n, 1, 1)).astype(f32)
        rad = rng.uniform(0.08, 0.25, size=(n, 1, 1)).astype(f32)
        disc = (((xs - px) ** 2 + (ys - py) ** 2) < rad * rad)[..., None]
        colour = _hue_to_rgb(rng.uniform(0, 1, size=n)).astype(f32)[:, None, None, :] * 0.6
        bg = np.where(disc, colour, bg)
    return bg.astype(f32)


def generate(
    family: str,
    classes: int,
    per_class: int,
    resolution: int,
    split: str,
    seed: int = 0,
    class_offset: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, R, R, 3) uint8 and labels (N,) int64, class-major order.

    Label ``k`` is class ``class_offset + k`` of the family. Deterministic in all arguments;
    the train and test splits of the same seed never share a random stream.
    """
    if not 8 <= resolution <= 512:
        raise ValueError(f"resolution must be in [8, 512], got {resolution}")
    if classes < 1 or per_class < 1:
        raise ValueError(f"classes and per_class must be >= 1, got {classes}, {per_class}")
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(_SPLIT_CODES)}, got {split!r}")
    images = np.concatenate(
        [class_images(family, class_offset + k, per_class, resolution, split, seed) for k in range(classes)]
    )
    labels = np.repeat(np.arange(classes, dtype=np.int64), per_class)
    return images, labels


def class_images(family: str, cls: int, per_class: int, resolution: int, split: str, seed: int = 0) -> np.ndarray:
    """The ``per_class`` images (per_class, R, R, 3) of class ``cls`` in one split: ``generate``
    one class at a time, so a store can be written without holding the whole set."""
    images = np.empty((per_class, resolution, resolution, 3), dtype=np.uint8)
    # Bound the (n, R, R) float temporaries to ~16 MB whatever the resolution.
    chunk = max(1, (1 << 22) // (resolution * resolution))
    proto = prototype(family, cls)
    rng = np.random.default_rng([_family_code(family), seed, _SPLIT_CODES[split], cls])
    for start in range(0, per_class, chunk):
        n = min(chunk, per_class - start)
        images[start : start + n] = render_class(proto, n, resolution, rng)
    return images
