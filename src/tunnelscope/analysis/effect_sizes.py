"""Effect sizes and their intervals: Cliff's delta, (cluster) bootstrap intervals, the
t-interval across seeds, and Holm's correction."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from tunnelscope.metrics.seeds import SEED, t_interval

CLIFF_BANDS = ((0.474, "large"), (0.33, "medium"), (0.147, "small"))  # below the last: negligible
# Fewer clusters give no cluster-bootstrap interval: 3 backbones have only 10 distinct resamples
# (2 have 3), so a percentile interval over them says little and runs narrow.
MIN_CLUSTERS = 4


def cliffs_delta(high, low) -> float:
    """(#(h > l) - #(h < l)) / (n_h n_l) over all cross pairs."""
    high, low = np.asarray(high, dtype=float), np.asarray(low, dtype=float)
    if len(high) == 0 or len(low) == 0:
        return float("nan")
    # Rank-based count in O((n + m) log m) instead of the n x m comparison matrix.
    low_sorted = np.sort(low)
    below = np.searchsorted(low_sorted, high, side="left")
    above = len(low) - np.searchsorted(low_sorted, high, side="right")
    return float((below.sum() - above.sum()) / (len(high) * len(low)))


def cliffs_magnitude(delta: float) -> str:
    if np.isnan(delta):
        return ""
    for lower, name in CLIFF_BANDS:
        if abs(delta) >= lower:
            return name
    return "negligible"


def bootstrap_interval(values: np.ndarray, n_resamples: int) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean (the mean itself for 0-spread data)."""
    if len(values) > 1 and np.ptp(values) > 0:
        ci = stats.bootstrap(
            (values,), np.mean, n_resamples=n_resamples, method="percentile", random_state=0
        ).confidence_interval
        return float(ci.low), float(ci.high)
    mean = float(values.mean()) if len(values) else float("nan")
    return mean, mean


def _resample_counts(indices: np.ndarray, k: int) -> np.ndarray:
    """(resamples, k) counts of each cluster in resamples of cluster indices (last axis)."""
    flat = indices.reshape(-1, indices.shape[-1])
    offsets = k * np.arange(len(flat))[:, None]
    counts = np.bincount((flat + offsets).ravel(), minlength=k * len(flat)).reshape(len(flat), k)
    return counts.reshape(*indices.shape[:-1], k)


def _cluster_bootstrap(statistic, k: int, n_resamples: int) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of ``statistic(counts)`` over resamples of k clusters
    with replacement (scipy's bootstrap, resampling the cluster indices; counts has the
    resamples on the leading axes and one column per cluster)."""
    ci = stats.bootstrap(
        (np.arange(k),),
        lambda idx, axis=-1: statistic(_resample_counts(idx, k)),
        n_resamples=n_resamples,
        method="percentile",
        vectorized=True,
        random_state=0,
    ).confidence_interval
    return float(ci.low), float(ci.high)


def cluster_bootstrap_interval(values, clusters, n_resamples: int) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean over rows, resampling whole clusters
    (backbones) with all their rows: the OOD sets and seeds of one backbone share its training,
    so its rows are not independent draws. NaN with fewer than ``MIN_CLUSTERS``; the mean itself
    for 0-spread data."""
    values = np.asarray(values, dtype=float)
    codes, uniques = pd.factorize(pd.Series(clusters))
    k = len(uniques)
    if k < MIN_CLUSTERS:
        return float("nan"), float("nan")
    if np.ptp(values) == 0:
        mean = float(values.mean()) if len(values) else float("nan")
        return mean, mean
    sums = np.bincount(codes, weights=values, minlength=k)
    sizes = np.bincount(codes, minlength=k).astype(float)
    return _cluster_bootstrap(lambda w: (w @ sums) / (w @ sizes), k, n_resamples)


def cluster_delta_interval(after, before, clusters, n_resamples: int) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of Cliff's delta(after, before) over paired rows,
    resampling whole clusters (backbone pairs). Each resample's delta is the pooled one over its
    rows, from the cluster-by-cluster sums of sign(after - before) (exact, no row copies). NaN
    with fewer than ``MIN_CLUSTERS`` clusters."""
    after, before = np.asarray(after, dtype=float), np.asarray(before, dtype=float)
    codes, uniques = pd.factorize(pd.Series(clusters))
    k = len(uniques)
    if k < MIN_CLUSTERS:
        return float("nan"), float("nan")
    if np.ptp(np.concatenate([after, before])) == 0:
        delta = cliffs_delta(after, before)
        return delta, delta
    member = np.eye(k)[codes]  # (rows, clusters)
    signs = member.T @ np.sign(after[:, None] - before[None, :]) @ member  # [c, d]: to rows of c vs from rows of d
    sizes = member.sum(axis=0)
    return _cluster_bootstrap(
        lambda w: np.einsum("...i,ij,...j->...", w, signs, w) / ((w @ sizes) ** 2), k, n_resamples
    )


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count). The same as
    statsmodels' multipletests(method="holm"), which is not a dependency: four lines."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    steps = p[order] * (len(order) - np.arange(len(order)))
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(steps))
    return adjusted


def per_seed_interval(rows: pd.DataFrame, statistic, confidence: float) -> dict:
    """n_seeds and the t-interval across seeds of ``statistic(rows of one seed)``; NaN bounds
    with fewer than two seeds (or no seed column)."""
    if SEED not in rows.columns or rows.empty:
        return {"n_seeds": 1 if len(rows) else 0, "ci_low": float("nan"), "ci_high": float("nan")}
    _, low, high, _ = t_interval([statistic(group) for _, group in rows.groupby(SEED, sort=True)], confidence)
    return {"n_seeds": int(rows[SEED].nunique()), "ci_low": low, "ci_high": high}
