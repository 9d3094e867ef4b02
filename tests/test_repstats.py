"""Layer statistics against their published formulas, each written here independently of
metrics/layer_stats.py, on small planted-class matrices."""

import numpy as np
import pytest

from tunnelscope.metrics import layer_stats as repstats

RNG = np.random.default_rng(0)
EPS = 1e-7  # Garrido et al.'s epsilon


def planted(n: int, d: int, sizes: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of len(sizes) classes (class i has sizes[i] rows, n in all), means a unit apart in d
    dims, within-class noise whose dims' scales fall from 1 to 1e-4 (a spectrum that the rank
    threshold cuts through)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    assert len(labels) == n
    means = rng.normal(size=(len(sizes), d))
    noise = rng.normal(size=(n, d)) * np.geomspace(1, 1e-4, d)
    return means[labels] + noise, labels


def covariance_rank(x, tol=1e-3):
    eig = np.linalg.eigvalsh(np.cov(x, rowvar=False))
    return int((eig > tol * eig.max()).sum())


def rankme_formula(values):
    p = values / np.sum(values) + EPS
    return np.exp(-np.sum(p * np.log(p)))


def nc1_formula(x, labels, global_mean):
    """Papyan et al. (2020): tr(Sigma_W Sigma_B^+) / C, the pseudo-inverse on Sigma_B's C - 1 largest eigenvalues."""
    classes = sorted(set(labels))
    mu = {c: x[labels == c].mean(0) for c in classes}
    sigma_w = sum(np.outer(h - mu[c], h - mu[c]) for h, c in zip(x, labels)) / len(x)
    sigma_b = sum(np.outer(mu[c] - global_mean, mu[c] - global_mean) for c in classes) / len(classes)
    eig, vec = np.linalg.eigh(sigma_b)
    top = np.argsort(eig)[::-1][: min(len(classes) - 1, x.shape[1])]
    pinv = vec[:, top] @ np.diag(1 / eig[top]) @ vec[:, top].T
    return np.trace(sigma_w @ pinv) / len(classes)


def kernel_cka(x, y):
    """Kornblith et al. (2019): HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, L = Y Y^T,
    the biased HSIC tr(K H L H) (its 1 / (n - 1)^2 cancels)."""
    h = np.eye(len(x)) - 1 / len(x)
    k, l_ = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def test_numerical_rank_of_a_known_low_rank_matrix():
    x = RNG.normal(size=(200, 5)) @ RNG.normal(size=(5, 20))
    assert repstats.numerical_rank(x) == 5


@pytest.mark.parametrize("n, d", [(160, 320), (300, 90)])
def test_numerical_rank_is_exact_with_more_or_fewer_dims_than_samples(n, d):
    x, _ = planted(n, d, [n // 4] * 4)
    expected = covariance_rank(x)
    assert 20 < expected < min(n, d) - 20  # the threshold cuts inside the spectrum
    assert repstats.numerical_rank(x) == expected
    assert repstats.numerical_rank(x.astype(np.float32)) == covariance_rank(x.astype(np.float32))
    assert repstats.numerical_rank(x, rel_tol=1e-5) == covariance_rank(x, 1e-5) > expected


def test_rankme_is_garridos_and_rankme_cov_the_centred_squared_spectrum():
    x, _ = planted(120, 40, [30] * 4)
    x = x + 3.0  # an offset: only the covariance convention is blind to it
    assert repstats.rankme(x) == pytest.approx(rankme_formula(np.linalg.svd(x, compute_uv=False)), rel=1e-12)
    covariance = np.clip(np.linalg.eigvalsh(np.cov(x, rowvar=False)), 0, None)
    assert repstats.rankme_cov(x) == pytest.approx(rankme_formula(covariance), rel=1e-9)
    assert repstats.rankme(x) > 1.1 * repstats.rankme_cov(x)  # two conventions, two numbers


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
    assert np.isnan(repstats.nc1(x, np.zeros(4)))  # one class: no between-class scatter


@pytest.mark.parametrize("d, sizes", [(30, [10, 20, 40, 30, 50]), (4, [5] * 6 + [40] * 4)])
def test_nc1_is_papyans_with_the_mean_of_the_rows(d, sizes):
    x, labels = planted(sum(sizes), d, sizes, seed=d)
    expected = nc1_formula(x, labels, x.mean(0))
    assert repstats.nc1(x, labels) == pytest.approx(expected, rel=1e-9)
    class_means = np.stack([x[labels == c].mean(0) for c in np.unique(labels)])
    assert abs(nc1_formula(x, labels, class_means.mean(0)) / expected - 1) > 0.01  # the global mean matters


def test_nc1_never_inverts_rounding_noise():
    x, labels = planted(200, 30, [40] * 5, seed=1)
    # A common offset of 1e9 leaves rounding noise of about 1e-7 in the centred class means:
    # Sigma_B then has 25 spurious eigenvalues near 1e-14 of its largest, above numpy's pinv cut-off.
    assert repstats.nc1(x + 1e9, labels) == pytest.approx(nc1_formula(x, labels, x.mean(0)), rel=1e-4)


def test_linear_cka_is_kornbliths_biased_estimator():
    x, _ = planted(60, 12, [15] * 4)
    y = np.tanh(x @ RNG.normal(size=(12, 7))) + 0.3 * RNG.normal(size=(60, 7))
    assert repstats.linear_cka(x, y) == pytest.approx(kernel_cka(x, y), rel=1e-10)
    assert repstats.linear_cka(x, y) < 0.99


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
    assert rows[0]["numerical_rank"] == covariance_rank(layers[1]) == 4
    assert set(rows[0]) == {"layer", "numerical_rank", "rankme", "rankme_cov", "nc1", "cka_to_last"}
