"""Tunnel metrics over one backbone's probe curves (Harun et al. 2024, Sec. 3.2; docs/protocol.md).

Curves are probe test accuracies as fractions, one value per probed layer 1..L. A layer whose
probe failed (probe/failure.py) is NaN there: missing, never the best layer, and left out of the
correlation; what needs its accuracy (the last layer's, for the tunnel) is NaN or None in turn,
and each metrics row counts the failed layers (``n_failed_layers``, ``failed_layers``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from tunnelscope.metrics.paired import first_argmax, last_significantly_below_best
from tunnelscope.probe.predictions import correct
from tunnelscope.registry import CELL_VARIABLES

STRENGTH_BANDS = ((95.0, "negligible"), (90.0, "weak"), (80.0, "medium"), (-math.inf, "strong"))


def tunnel_metrics(
    id_curve,
    ood_curve,
    id_classes: int,
    ood_classes: int,
    alignment_layer: str = "last",
    id_accuracy: float | None = None,
    last_below_best: bool | None = None,
) -> dict:
    """Metrics of one (backbone, OOD set) pair.

    l_m is the first layer reaching the OOD maximum; by the papers' rule a tunnel exists iff
    l_m < L and the maximum beats the last layer strictly, so ties with the last layer mean no
    tunnel. ``last_below_best`` (the ``significant`` rule: is the last layer significantly
    below the best on the same test images?) must hold as well when given.
    % OOD retained 100 a_p / a_m does not depend on the rule (100 where a_m = 0).
    Alignment A = (a_id - 1/C_id)(a_ood - 1/C_ood) takes both accuracies at the last layer
    (``alignment_layer`` "last", the paper's) or at l_m ("ood_best"); ``id_accuracy``, when
    given, replaces the ID probe's accuracy (the backbone's own top-1).

    NaN entries are failed layers: l_m is the first maximum of the others; without the last
    layer's (or any) OOD accuracy the tunnel is undecided: ``tunnel`` None, its start, length and
    % retained NaN. Pearson r is taken over the layers with both accuracies.
    """
    id_curve = np.asarray(id_curve, dtype=float)
    ood = np.asarray(ood_curve, dtype=float)
    if id_curve.shape != ood.shape or ood.ndim != 1 or len(ood) == 0:
        raise ValueError(f"ID and OOD curves must be equal-length 1-D, got {id_curve.shape} and {ood.shape}")
    n_layers = len(ood)
    l_m = first_argmax(ood) + 1  # NaN, a failed layer, is never the best
    a_m, a_p = float(ood[l_m - 1]), float(ood[-1])
    at = n_layers if alignment_layer == "last" else l_m
    a_id = float(id_curve[at - 1]) if id_accuracy is None else float(id_accuracy)
    both = np.isfinite(id_curve) & np.isfinite(ood)
    return {
        "num_layers": n_layers,
        "ood_best_layer": l_m if math.isfinite(a_m) else math.nan,
        "ood_best_acc": a_m,
        "ood_last_acc": a_p,
        "id_last_acc": float(id_curve[-1]),
        **_tunnel(l_m, a_m, a_p, n_layers, last_below_best),
        "pearson": pearson(id_curve[both], ood[both]),
        "alignment": (a_id - 1.0 / id_classes) * (float(ood[at - 1]) - 1.0 / ood_classes),
    }


def _tunnel(l_m: int, a_m: float, a_p: float, n_layers: int, last_below_best: bool | None) -> dict:
    """The tunnel of an OOD curve of best layer l_m (accuracy a_m) and last accuracy a_p;
    undecided (None, NaN) where either accuracy is missing."""
    if not (math.isfinite(a_m) and math.isfinite(a_p)):
        return {"tunnel": None, "tunnel_start": math.nan, "tunnel_length": math.nan, "ood_retained": math.nan}
    tunnel = l_m < n_layers and a_m > a_p and (last_below_best is None or last_below_best)
    return {
        "tunnel": bool(tunnel),
        "tunnel_start": l_m if tunnel else n_layers,
        "tunnel_length": n_layers - l_m if tunnel else 0,
        "ood_retained": 100.0 * a_p / a_m if a_m > 0 else 100.0,
    }


def pearson(x, y) -> float:
    """Pearson r, NaN when either curve is constant (r is undefined there)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.pearsonr(x, y).statistic)


def id_tunnel_start(id_curve, threshold: float) -> int:
    """Masarczyk's rule: first layer (1-based) whose ID accuracy >= threshold x the last layer's
    (a failed probe, NaN, never qualifies). A failed last layer leaves no rule: a ValueError."""
    curve = np.asarray(id_curve, dtype=float)
    if not np.isfinite(curve[-1]):
        raise ValueError("the last layer's ID probe failed (no accuracy): the tunnel start is undecided")
    return int(np.flatnonzero(curve >= threshold * curve[-1])[0]) + 1


def strength(mean_retained: float) -> str | None:
    """Tunnel strength class from % OOD retained averaged over a backbone's OOD sets (None
    where every OOD set's is missing: failed probes)."""
    if isinstance(mean_retained, float) and math.isnan(mean_retained):
        return None
    for lower, name in STRENGTH_BANDS:
        if mean_retained >= lower:
            return name
    raise ValueError(f"not a percentage: {mean_retained}")


def normalise(curve) -> np.ndarray:
    """A curve divided by its own maximum (all-zero curves stay zero)."""
    curve = np.asarray(curve, dtype=float)
    top = curve.max()
    return curve / top if top > 0 else curve.copy()


# A backbone's facts besides its cell variables; with those, copied from cell.json onto every
# metrics row (the analysis variables among them) and kept by the seed summaries.
BACKBONE_FACTS = (
    "label",
    "family",
    "arch_family",
    "stem",
    "spatial_reduction",
    "depth",
    "id_classes",
    "gamma",
    "params",
    "width",
)
CELL_FACTS = (*CELL_VARIABLES, *BACKBONE_FACTS)


def cell_metrics(
    probes: pd.DataFrame, cell_info: dict, settings: dict, predictions: dict[str, pd.DataFrame] | None = None
) -> pd.DataFrame:
    """One row per OOD set of one cell, from its probe table (all eval sets, all layers), in the
    order of ``settings['ood_sets']`` (``ood_index`` 1.. is that position); ``settings`` also holds
    id_start_thresholds, alignment_layer, alignment_id, tunnel_rule and alpha (metrics
    settings). ``predictions`` (by eval set, probe/predictions.py) give ``last_vs_best_p``, the
    McNemar p of the last layer against the best, and are needed by the ``significant`` rule.
    Failed layers (``failed_layers``) are missing: NaN in the curves (``tunnel_metrics``)."""
    probes = probes.sort_values(["eval_set", "layer"])
    id_rows = probes[probes.role == "id"]
    if id_rows.empty:
        raise ValueError("the probe table has no ID rows")
    id_curve = np.where(failed_layers(id_rows), np.nan, id_rows.test_acc.to_numpy())
    id_classes = int(id_rows.n_classes.iloc[0])
    id_accuracy = None
    if settings["alignment_id"] == "backbone":
        id_accuracy = cell_info.get("test_acc")
        if id_accuracy is None:
            raise ValueError(
                f"metrics.alignment_id backbone: cell {cell_info['arch']} has no backbone test accuracy (a published model); use probe"
            )
    ood_rows = {name: group for name, group in probes[probes.role == "ood"].groupby("eval_set")}
    rows = []
    for index, eval_set in enumerate(settings["ood_sets"], start=1):
        ood = ood_rows.get(eval_set)
        if ood is None:
            raise ValueError(f"OOD set {eval_set}: no probe rows")
        if len(ood) != len(id_curve):
            raise ValueError(f"eval set {eval_set}: {len(ood)} layers probed, ID has {len(id_curve)}")
        ood_failed = failed_layers(ood)
        curve = np.where(ood_failed, np.nan, ood.test_acc.to_numpy())
        below, p = (
            (None, float("nan"))  # no last layer to test: the tunnel is undecided
            if ood_failed[-1]
            else _last_below_best(ood[~ood_failed], (predictions or {}).get(eval_set), settings, eval_set)
        )
        failed = ood.layer.to_numpy()[ood_failed | np.isnan(id_curve)]
        row = {
            "ood_set": eval_set,
            "ood_index": index,
            **tunnel_metrics(
                id_curve, curve, id_classes, int(ood.n_classes.iloc[0]), settings["alignment_layer"], id_accuracy, below
            ),
            "last_vs_best_p": p,
            "n_failed_layers": len(failed),
            "failed_layers": ",".join(str(int(layer)) for layer in failed),
        }
        for thr in settings["id_start_thresholds"]:
            start = id_tunnel_start(id_curve, thr) if np.isfinite(id_curve[-1]) else math.nan
            row[f"id_start_{round(thr * 100)}"] = start
            row[f"id_tunnel_length_{round(thr * 100)}"] = len(id_curve) - start
        rows.append(row)
    table = pd.DataFrame(rows)
    table["tunnel_rule"] = settings["tunnel_rule"]
    table["strength"] = strength(table.ood_retained.mean()) if len(table) else None
    for key in CELL_FACTS:
        table[key] = cell_info.get(key)
    table["backbone_test_acc"] = cell_info.get("test_acc")
    return table


def failed_layers(probe_rows: pd.DataFrame) -> np.ndarray:
    """Which of ``probe_rows`` are failed probes (probe/failure.py): a ``failure`` reason, or, in
    a table from before that column, a NaN test accuracy."""
    if "failure" in probe_rows.columns:
        return probe_rows.failure.fillna("").astype(str).str.len().to_numpy() > 0
    return probe_rows.test_acc.isna().to_numpy()


def _last_below_best(ood: pd.DataFrame, predictions: pd.DataFrame | None, settings: dict, eval_set: str):
    """(the ``significant`` rule's verdict, or None under the ``paper`` rule; McNemar p of the
    last layer against the best, NaN without predictions)."""
    if predictions is None:
        if settings["tunnel_rule"] == "significant":
            raise ValueError(f"metrics.tunnel_rule significant: OOD set {eval_set} has no predictions table")
        return None, float("nan")
    below, p = last_significantly_below_best(correct(predictions, ood.layer.to_numpy()), settings["alpha"])
    return (below if settings["tunnel_rule"] == "significant" else None), p
