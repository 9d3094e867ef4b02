"""Corrupted copies of an eval set: the corruptions themselves, their config, and their store."""

import colorsys
import warnings

import numpy as np
import pytest
import torch

from tunnelscope.data import corruptions
from tunnelscope.data.prepare import prepare
from tunnelscope.registry import CORRUPTIONS
from tunnelscope.study.checks import validate
from tunnelscope.study.schema import ConfigError, load_schema


def photo(seed=0):
    """Rectangles on a grey ground, with a little sensor noise: edges for blur, pixelation and
    JPEG to change, without a period for pixelation to alias with."""
    rng = np.random.default_rng(seed)
    image = np.full((48, 64, 3), 100.0)
    for _ in range(12):
        y, x = rng.integers(0, 40), rng.integers(0, 56)
        h, w = rng.integers(4, 20, 2)
        image[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_zero_is_the_clean_image_and_severity_increases_the_distance(name):
    image = photo()
    assert np.array_equal(corruptions.corrupt(image, name, 0), image)
    distances = []
    for severity in range(1, 6):
        out = corruptions.corrupt(image, name, severity, corruptions.image_generator(0, "test", 3))
        assert out.shape == image.shape and out.dtype == np.uint8
        distances.append(np.abs(out.astype(float) - image).mean())
    assert distances[0] > 0 and all(b >= a for a, b in zip(distances, distances[1:])), distances
    assert distances[-1] > distances[0]


def test_draws_are_seeded_per_image():
    image = photo()

    def noisy(seed, split, index):
        return corruptions.corrupt(image, "gaussian_noise", 3, corruptions.image_generator(seed, split, index))

    assert np.array_equal(noisy(0, "test", 5), noisy(0, "test", 5))
    assert not np.array_equal(noisy(0, "test", 5), noisy(0, "test", 6))
    assert not np.array_equal(noisy(0, "test", 5), noisy(1, "test", 5))
    assert not np.array_equal(noisy(0, "test", 5), noisy(0, "train", 5))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_read_only_images_are_corrupted_without_a_warning(name):
    image = np.random.default_rng(1).integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    image.setflags(write=False)  # as decoded images and memory-mapped stores hand them over
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = corruptions.corrupt(image, name, 3, corruptions.image_generator(0, "test", 2))
    assert out.shape == image.shape and out.dtype == np.uint8


def test_unknown_corruption_and_severity_are_named():
    with pytest.raises(ValueError, match="corruption 'fog'"):
        corruptions.corrupt(photo(), "fog", 1)
    with pytest.raises(ValueError, match="severity 6"):
        corruptions.corrupt(photo(), "jpeg", 6)


def _config(tmp_path, datasets, ood):
    config = {
        "results": str(tmp_path / "out"),
        "datasets": {
            "toy": {"source": "synthetic", "family": "shapes", "classes": 3, "train_per_class": 6, "test_per_class": 4},
            **datasets,
        },
        "grid": {"arch": ["vggm11"], "id_dataset": ["toy"], "resolution": [32]},
        "ood_sets": ood,
    }
    return validate(config, load_schema())


def test_config_resolves_the_clean_set_and_names_bad_references(tmp_path):
    config = _config(
        tmp_path,
        {"toy-noise": {"source": "corrupted", "of": "toy", "corruption": "gaussian_noise", "severity": 2}},
        ["toy-noise"],
    )
    spec = config["datasets"]["toy-noise"]
    assert spec["base"]["family"] == "shapes" and spec["seed"] == 0
    with pytest.raises(ConfigError, match=r"datasets.bad.of: unknown dataset 'nope'"):
        _config(tmp_path, {"bad": {"source": "corrupted", "of": "nope", "corruption": "jpeg", "severity": 1}}, ["bad"])
    chained = {
        "a": {"source": "corrupted", "of": "toy", "corruption": "jpeg", "severity": 1},
        "b": {"source": "corrupted", "of": "a", "corruption": "jpeg", "severity": 1},
    }
    with pytest.raises(ConfigError, match=r"datasets.b.of: 'a' is itself a corrupted copy"):
        _config(tmp_path, chained, ["b"])
    with pytest.raises(ConfigError, match="severity"):
        _config(tmp_path, {"bad": {"source": "corrupted", "of": "toy", "corruption": "jpeg", "severity": 7}}, ["bad"])


def test_prepared_copy_is_the_clean_store_corrupted_image_by_image(tmp_path):
    config = _config(
        tmp_path,
        {"toy-blur": {"source": "corrupted", "of": "toy", "corruption": "gaussian_blur", "severity": 4, "seed": 3}},
        ["toy-blur"],
    )
    clean = prepare("toy", config["datasets"]["toy"], 32, tmp_path / "clean", threads=2)
    copy = prepare("toy-blur", config["datasets"]["toy-blur"], 32, tmp_path / "blur", threads=2)
    assert copy.meta["corruption"] == {"of": "toy", "corruption": "gaussian_blur", "severity": 4, "seed": 3}
    for split in ("train", "test"):
        a, b = clean.splits[split], copy.splits[split]
        assert np.array_equal(a.labels, b.labels)
        for i in range(len(a)):
            expected = corruptions.corrupt(a.image(i), "gaussian_blur", 4, corruptions.image_generator(3, split, i))
            assert np.array_equal(b.image(i), expected), (split, i)
    assert not np.array_equal(clean.splits["test"].image(0), copy.splits["test"].image(0))


def test_threads_do_not_change_the_copy(tmp_path):
    config = _config(
        tmp_path,
        {"toy-noise": {"source": "corrupted", "of": "toy", "corruption": "gaussian_noise", "severity": 5}},
        ["toy-noise"],
    )
    stores = [prepare("toy-noise", config["datasets"]["toy-noise"], 32, tmp_path / f"t{t}", threads=t) for t in (1, 3)]
    for split in ("train", "test"):
        assert all(
            np.array_equal(stores[0].splits[split].image(i), stores[1].splits[split].image(i))
            for i in range(len(stores[0].splits[split]))
        )
    torch.manual_seed(0)  # the global generator plays no part
    again = prepare("toy-noise", config["datasets"]["toy-noise"], 32, tmp_path / "again", threads=2)
    assert np.array_equal(again.splits["test"].image(2), stores[0].splits["test"].image(2))


# CIFAR-10-C's generator (make_cifar_c.py), written out here as independent references: every
# corruption on the [0, 1] image in float64, then np.uint8(np.clip(x, 0, 1) * 255).
def _published(x: np.ndarray) -> np.ndarray:
    return np.uint8(np.clip(x, 0, 1) * 255)


def _skimage_gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """skimage.filters.gaussian(x, sigma, channel_axis=-1): a separable Gaussian kernel of
    radius int(4 sigma + 0.5), normalised, edges extended (mode 'nearest')."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(x, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    rows = sum(w * padded[k : k + x.shape[0]] for k, w in enumerate(taps))
    return sum(w * rows[:, k : k + x.shape[1]] for k, w in enumerate(taps))


def _hsv_brightness(x: np.ndarray, amount: float) -> np.ndarray:
    """skimage.color's rgb2hsv, V + amount clipped to 1, hsv2rgb: per pixel, by colorsys."""
    out = np.empty_like(x)
    for index in np.ndindex(x.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*x[index])
        out[index] = colorsys.hsv_to_rgb(h, s, min(v + amount, 1.0))
    return out


PUBLISHED = {
    "gaussian_blur": lambda x, c: _skimage_gaussian(x, c),
    "contrast": lambda x, c: (x - x.mean(axis=(0, 1), keepdims=True)) * c + x.mean(axis=(0, 1), keepdims=True),
    "brightness": _hsv_brightness,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_corruptions_follow_cifar10c_formulas_at_32px(name, severity):
    image = np.random.default_rng(severity).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    image[:3, :3] = 0  # black pixels: brightness turns them grey
    reference = PUBLISHED[name](image / 255.0, corruptions.PARAMETERS[name][severity - 1])
    got = corruptions.corrupt(image, name, severity).astype(int)
    # Where the reference lies within float64 rounding of a whole level, truncation may land on
    # either side (in CIFAR-10-C's own skimage arithmetic too): one level apart there, equal elsewhere.
    levels = np.clip(reference, 0, 1) * 255
    on_edge = np.abs(levels - np.round(levels)) < 1e-9
    assert np.array_equal(got[~on_edge], _published(reference)[~on_edge])
    assert np.all(np.abs(got[on_edge] - levels[on_edge]) < 1 + 1e-6)


def test_noise_is_cifar10c_formula_on_the_images_own_draws():
    image = photo()
    h, w, c = image.shape  # drawn channel plane by channel plane
    draws = torch.randn((c, h, w), generator=corruptions.image_generator(0, "test", 1)).permute(1, 2, 0).double()
    expected = _published(image / 255.0 + 0.08 * draws.numpy())
    assert np.array_equal(
        corruptions.corrupt(image, "gaussian_noise", 3, corruptions.image_generator(0, "test", 1)), expected
    )


def test_parameters_are_cifar10cs():
    assert corruptions.PARAMETERS == {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "jpeg": (80, 65, 58, 50, 40),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    }
    assert tuple(CORRUPTIONS) == tuple(corruptions.PARAMETERS)  # nothing offered beyond CIFAR-10-C's
