"""Tunnel metrics over one backbone's probe curves (PROTOCOL.md, "Metrics").

Curves are probe test accuracies as fractions, one value per probed layer 1..L.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

STRENGTH_BANDS = ((95.0, "negligible"), (90.0, "weak"), (80.0, "medium"), (-math.inf, "strong"))


def tunnel_metrics(id_curve, ood_curve, id_classes: int, ood_classes: int) -> dict:
    """Metrics of one (backbone, OOD set) pair.

    l_m is the first layer reaching the OOD maximum; a tunnel exists iff l_m < L and the
    maximum beats the last layer strictly, so ties with the last layer mean no tunnel.
    """
    id_curve = np.asarray(id_curve, dtype=float)
    ood = np.asarray(ood_curve, dtype=float)
    if id_curve.shape != ood.shape or ood.ndim != 1 or len(ood) == 0:
        raise ValueError(f"ID and OOD curves must be equal-length 1-D, got {id_curve.shape} and {ood.shape}")
    n_layers = len(ood)
    l_m = int(np.argmax(ood)) + 1
    a_m, a_p = float(ood[l_m - 1]), float(ood[-1])
    tunnel = l_m < n_layers and a_m > a_p
    return {
        "num_layers": n_layers,
        "ood_best_layer": l_m,
        "ood_best_acc": a_m,
        "ood_last_acc": a_p,
        "id_last_acc": float(id_curve[-1]),
        "tunnel": bool(tunnel),
        "tunnel_start": l_m if tunnel else n_layers,
        "tunnel_length": n_layers - l_m if tunnel else 0,
        "ood_retained": 100.0 * a_p / a_m if tunnel else 100.0,
        "pearson": pearson(id_curve, ood),
        "alignment": (id_curve[-1] - 1.0 / id_classes) * (ood[-1] - 1.0 / ood_classes),
    }


def pearson(x, y) -> float:
    """Pearson r, NaN when either curve is constant (r is undefined there)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.pearsonr(x, y).statistic)


def id_tunnel_start(id_curve, threshold: float) -> int:
    """Masarczyk's rule: first layer (1-based) whose ID accuracy >= threshold x the last layer's."""
    curve = np.asarray(id_curve, dtype=float)
    return int(np.flatnonzero(curve >= threshold * curve[-1])[0]) + 1


def strength(mean_retained: float) -> str:
    """Tunnel strength class from % OOD retained averaged over a backbone's OOD sets."""
    for lower, name in STRENGTH_BANDS:
        if mean_retained >= lower:
            return name
    raise ValueError(f"not a percentage: {mean_retained}")


def normalise(curve) -> np.ndarray:
    """A curve divided by its own maximum (all-zero curves stay zero)."""
    curve = np.asarray(curve, dtype=float)
    top = curve.max()
    return curve / top if top > 0 else curve.copy()


def cell_metrics(probes: pd.DataFrame, cell_info: dict, id_thresholds: list[float]) -> pd.DataFrame:
    """One row per OOD set of one cell, from its probe table (all eval sets, all layers)."""
    probes = probes.sort_values(["eval_set", "layer"])
    id_rows = probes[probes.role == "id"]
    if id_rows.empty:
        raise ValueError("the probe table has no ID rows")
    id_curve = id_rows.test_acc.to_numpy()
    id_classes = int(id_rows.n_classes.iloc[0])
    rows = []
    for eval_set, ood in probes[probes.role == "ood"].groupby("eval_set", sort=True):
        if len(ood) != len(id_curve):
            raise ValueError(f"eval set {eval_set}: {len(ood)} layers probed, ID has {len(id_curve)}")
        row = {"ood_set": eval_set, **tunnel_metrics(id_curve, ood.test_acc.to_numpy(), id_classes, int(ood.n_classes.iloc[0]))}
        for thr in id_thresholds:
            start = id_tunnel_start(id_curve, thr)
            row[f"id_start_{round(thr * 100)}"] = start
            row[f"id_tunnel_length_{round(thr * 100)}"] = len(id_curve) - start
        rows.append(row)
    table = pd.DataFrame(rows)
    table["strength"] = strength(table.ood_retained.mean()) if len(table) else None
    for key in ("arch", "id_dataset", "resolution", "augmentation", "seed", "family", "stem", "spatial_reduction", "depth", "id_classes", "gamma", "params", "width"):
        table[key] = cell_info[key]
    return table
