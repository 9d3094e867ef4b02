"""Probes that fail say so (docs/protocol.md, "Failed probes").

A fit whose loss, gradient, preconditioner or weights stop being finite, and that no fallback
recovers, is no measurement: its result says ``converged: false`` with the reason in
``failure``, its accuracies are NaN (not the chance accuracy its weights would score), its
predictions -1 (no class) and its weights NaN. A healthy result has ``failure`` "". Fallbacks that
recovered a fit are named in ``fallback`` ("" when none was needed). The metrics count failed
layers as missing (metrics/tunnel.py, metrics/best_layers.py).
"""

from __future__ import annotations

import numpy as np

NO_CLASS = -1  # a failed probe's prediction for every test row


class ProbeFailure(RuntimeError):
    """A fit that produced something non-finite; the message is the reason recorded."""


def failed_result(reason: str, n_features: int, n_classes: int, n_test: int, **facts) -> dict:
    """A solver's result for a layer whose fit failed: NaN accuracies and weights, no predicted
    class, ``converged`` false, ``failure`` the reason; ``facts`` add or override keys (the
    solver's precision, device_type, n_iter...)."""
    return {
        "train_acc": float("nan"),
        "test_acc": float("nan"),
        "test_pred": np.full(n_test, NO_CLASS, dtype=np.int64),
        "n_iter": 0,
        "converged": False,
        "failure": reason,
        "fallback": "",
        "weights": np.full((n_features + 1, n_classes), np.nan, dtype=np.float32),
        **facts,
    }


def all_finite(values) -> bool:
    """Whether every entry of an array or tensor is finite (a tensor is checked where it lies,
    one boolean read back)."""
    if hasattr(values, "isfinite"):
        return bool(values.isfinite().all())
    return bool(np.isfinite(values).all())


def nonfinite_count(values) -> int:
    """How many entries of an array or tensor are NaN or infinite (for messages)."""
    if hasattr(values, "isfinite"):
        return int((~values.isfinite()).sum())
    return int((~np.isfinite(values)).sum())


def features_problem(x_train, x_test) -> str:
    """Why a layer's features cannot be probed ("" when they can): values that are not finite."""
    return "; ".join(
        f"features not finite: {nonfinite_count(x)} values in the {name} rows"
        for name, x in (("training", x_train), ("test", x_test))
        if not all_finite(x)
    )
