import numpy as np
import pytest

from tunnelscope.metrics import layer_stats as repstats

RNG = np.random.default_rng(0)


def test_numerical_rank_of_a_known_low_rank_matrix():
    x = RNG.normal(size=(200, 5)) @ RNG.normal(size=(5, 20))
    assert repstats.numerical_rank(x) == 5


def test_numerical_rank_with_more_dims_than_samples_uses_a_projection():
    x = RNG.normal(size=(30, 3)) @ RNG.normal(size=(3, 100))
    assert repstats.numerical_rank(x) == 3


def test_rankme_counts_equal_orthogonal_directions():
    x = np.zeros((8, 8))
    x[np.arange(4), np.arange(4)] = 1.0  # four equal singular values
    assert repstats.rankme(x) == pytest.approx(4.0, rel=1e-4)
    assert repstats.rankme(np.outer(np.ones(5), np.arange(3.0))) == pytest.approx(1.0, rel=1e-4)


def test_nc1_hand_computed():
    a = 0.5
    x = np.array([[-1 - a], [-1 + a], [1 - a], [1 + a]])
    labels = np.array([0, 0, 1, 1])
    # Sigma_W = a^2, Sigma_B = 1 (class means -1, +1 around 0), C = 2.
    assert repstats.nc1(x, labels) == pytest.approx(a * a / 2)
    collapsed = np.array([[-1.0], [-1.0], [1.0], [1.0]])
    assert repstats.nc1(collapsed, labels) == pytest.approx(0.0)


def test_linear_cka_invariances():
    x = RNG.normal(size=(100, 6))
    q, _ = np.linalg.qr(RNG.normal(size=(6, 6)))
    assert repstats.linear_cka(x, x @ q) == pytest.approx(1.0)
    assert repstats.linear_cka(x, 3 * x + 2) == pytest.approx(1.0)
    assert repstats.linear_cka(x, RNG.normal(size=(100, 6))) < 0.2


def test_layer_stats_rows():
    labels = np.repeat([0, 1], 20)
    layers = {1: RNG.normal(size=(40, 4)), 2: RNG.normal(size=(40, 8))}
    rows = repstats.layer_stats(layers, labels)
    assert [r["layer"] for r in rows] == [1, 2]
    assert rows[-1]["cka_to_last"] == pytest.approx(1.0)
