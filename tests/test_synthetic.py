import time

import numpy as np
import pytest

from tunnelscope.data import synthetic


def test_same_arguments_give_identical_images():
    a = synthetic.generate("shapes", 5, 6, 32, "train", seed=3)
    b = synthetic.generate("shapes", 5, 6, 32, "train", seed=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_seed_and_split_change_the_images():
    base, _ = synthetic.generate("shapes", 3, 4, 32, "train", seed=0)
    other_seed, _ = synthetic.generate("shapes", 3, 4, 32, "train", seed=1)
    other_split, _ = synthetic.generate("shapes", 3, 4, 32, "test", seed=0)
    assert not np.array_equal(base, other_seed)
    assert not np.array_equal(base, other_split)


def test_a_class_does_not_depend_on_how_many_classes_are_asked_for():
    small, _ = synthetic.generate("glyphs", 3, 4, 24, "train")
    large, labels = synthetic.generate("glyphs", 10, 4, 24, "train")
    assert np.array_equal(small, large[:12])
    assert labels.tolist() == np.repeat(np.arange(10), 4).tolist()


def test_class_offset_selects_a_disjoint_class_range():
    offset, labels = synthetic.generate("shapes", 2, 3, 32, "train", class_offset=1000)
    start, _ = synthetic.generate("shapes", 2, 3, 32, "train")
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert not np.array_equal(offset, start)


def test_thousand_classes_have_distinct_prototypes():
    keys = set()
    for c in range(1000):
        p = synthetic.prototype("shapes", c)
        keys.add((tuple(np.round(p.harmonic_amps, 4)), round(p.stripe_freq, 4), round(p.fg_hue, 4)))
    assert len(keys) == 1000


@pytest.mark.parametrize("resolution", [16, 64, 224])
def test_any_resolution(resolution):
    images, labels = synthetic.generate("shapes", 2, 2, resolution, "test")
    assert images.shape == (4, resolution, resolution, 3) and images.dtype == np.uint8
    assert images.std() > 10  # not blank


def test_nuisances_vary_within_a_class():
    images, _ = synthetic.generate("shapes", 1, 16, 32, "train")
    flat = images.reshape(16, -1).astype(float)
    # Every pair of images of one class differs substantially (position, rotation, clutter).
    diffs = [np.abs(flat[i] - flat[j]).mean() for i in range(16) for j in range(i + 1, 16)]
    assert min(diffs) > 10


def test_unknown_family_is_rejected_by_name():
    with pytest.raises(ValueError, match="'blobs'"):
        synthetic.generate("blobs", 2, 2, 32, "train")


def test_generation_speed_at_32px_on_one_core():
    synthetic.generate("shapes", 10, 10, 32, "train")  # warm-up
    start = time.perf_counter()
    images, _ = synthetic.generate("shapes", 100, 40, 32, "train")
    rate = len(images) / (time.perf_counter() - start)
    assert rate >= 2000, f"{rate:.0f} images/s"
