"""Representation statistics of one layer's ID embeddings (docs/protocol.md, "numerical rank").

Features are rows of X (n samples x d dims). Written with numpy because each is a few lines of
linear algebra on one matrix; no maintained library computes NC1 or RankMe.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunnelscope.registry import CELL_VARIABLES


def _project(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Seeded Gaussian random projection to n dims when d > n (rank cannot exceed n anyway)."""
    n, d = x.shape
    if d <= n:
        return x
    rng = np.random.default_rng(seed)
    return x @ (rng.standard_normal((d, n)) / np.sqrt(n))


def numerical_rank(x: np.ndarray, rel_tol: float = 1e-3) -> int:
    """Number of singular values of the feature covariance above rel_tol x the largest."""
    x = _project(np.asarray(x, dtype=np.float64))
    x = x - x.mean(0)
    cov = x.T @ x / max(1, len(x) - 1)
    s = np.linalg.svd(cov, compute_uv=False)
    if s.size == 0 or s[0] <= 0:
        return 0
    return int((s > rel_tol * s[0]).sum())


def rankme(x: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of X."""
    s = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def nc1(x: np.ndarray, labels: np.ndarray) -> float:
    """Neural collapse NC1 = tr(Sigma_W Sigma_B^+) / C."""
    x = np.asarray(x, dtype=np.float64)
    classes = np.unique(labels)
    mean_all = x.mean(0)
    means = np.stack([x[labels == c].mean(0) for c in classes])
    within = x - means[np.searchsorted(classes, labels)]
    sigma_w = within.T @ within / len(x)
    centred = means - mean_all
    sigma_b = centred.T @ centred / len(classes)
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, hermitian=True)) / len(classes))


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) between two representations of the same samples."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / denom) if denom > 0 else float("nan")


def layer_stats(layers: dict[int, np.ndarray], labels: np.ndarray, rank_tol: float = 1e-3) -> list[dict]:
    """Per layer: numerical rank (singular values above ``rank_tol`` x the largest), RankMe,
    NC1 and linear CKA to the last layer."""
    last = layers[max(layers)]
    rows = []
    for index in sorted(layers):
        x = layers[index]
        rows.append(
            {
                "layer": index,
                "numerical_rank": numerical_rank(x, rank_tol),
                "rankme": rankme(x),
                "nc1": nc1(x, labels),
                "cka_to_last": linear_cka(x, last),
            }
        )
    return rows


def embed_dir_stats(embed_dir: str, params: dict) -> pd.DataFrame:
    """Layer statistics of one cell from its ID embeddings (one split, seeded subsample)."""
    from tunnelscope.features.store import layer_files, read_embeddings

    layers, keep, labels = {}, None, None

    def sample(y, split):  # every layer file holds the same samples in the same order
        nonlocal keep
        if keep is None:
            rows = np.flatnonzero(split == params["split"])
            if len(rows) > params["max_samples"]:
                rng = np.random.default_rng(params["seed"])
                rows = np.sort(rng.choice(rows, params["max_samples"], replace=False))
            keep = np.zeros(len(y), dtype=bool)
            keep[rows] = True
        return keep

    for path in layer_files(embed_dir, params["pooling"]):
        meta, x, labels, _ = read_embeddings(path, select=sample)  # only the sampled rows
        layers[meta["layer"]] = x
    front = {k: params[k] for k in CELL_VARIABLES}
    return pd.DataFrame([{**front, **row} for row in layer_stats(layers, labels, params["rank_tol"])])
