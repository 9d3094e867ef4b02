"""Paired statistics of probe accuracies on the same test images (their documentation and the
reasons for each choice: metrics/best_layers.py)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def accuracy_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``successes`` / ``n`` (NaN with no images)."""
    if n == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _discordant(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(images only a gets right, images only b gets right)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    return int((a & ~b).sum()), int((~a & b).sum())


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Exact two-sided McNemar p of two classifiers' per-image correctness on the same images
    (1.0 when they never disagree)."""
    only_a, only_b = _discordant(a, b)
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_difference_interval(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """(difference, low, high): accuracy of a minus accuracy of b on the same images, with
    Newcombe's paired score interval (method 10)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = len(a)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    both, only_a = int((a & b).sum()), int((a & ~b).sum())
    only_b, neither = int((~a & b).sum()), int((~a & ~b).sum())
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    low_a, high_a = accuracy_interval(both + only_a, n, confidence)
    low_b, high_b = accuracy_interval(both + only_b, n, confidence)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(margins) if margins else 0.0
    below = math.sqrt(max(0.0, (p_a - low_a) ** 2 - 2 * phi * (p_a - low_a) * (high_b - p_b) + (high_b - p_b) ** 2))
    above = math.sqrt(max(0.0, (high_a - p_a) ** 2 - 2 * phi * (high_a - p_a) * (p_b - low_b) + (p_b - low_b) ** 2))
    diff = p_a - p_b
    return diff, diff - below, diff + above


def first_argmax(values) -> int:
    """Position of the largest value, the earliest on ties (NaN never wins)."""
    values = np.asarray(values, dtype=float)
    return int(np.argmax(np.where(np.isnan(values), -np.inf, values)))


def last_significantly_below_best(hits: np.ndarray, alpha: float) -> tuple[bool, float]:
    """(whether the last layer is significantly below the best, McNemar p of the two) from
    (images, layers) correctness; the best is the first layer of highest accuracy."""
    accuracy = hits.mean(0)
    best = first_argmax(accuracy)
    p = mcnemar_p(hits[:, best], hits[:, -1])
    return bool(accuracy[best] > accuracy[-1] and p < alpha), p
