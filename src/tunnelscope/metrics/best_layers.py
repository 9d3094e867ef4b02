"""The answer with its uncertainty: per (backbone, OOD set) the best layer, how sure we are of it,
the layer a validation split would choose, and whether the last layer is significantly worse.

Everything is computed on the probes' per-image predictions (probe/predictions.py), so every
comparison between two layers is paired: the same test images, the same labels.

- Accuracy intervals: Wilson score intervals over the test images (scipy.stats.binomtest),
  at confidence 1 - ``metrics.alpha``.
- Paired test: the exact McNemar test, a two-sided binomial test of the discordant images
  (right under one layer, wrong under the other) against 1/2.
- "Indistinguishable from the best": McNemar p >= alpha against the best layer, each layer
  tested on its own with no multiplicity correction. A correction (Holm) would only widen the
  set; uncorrected, the set is the narrower, more conservative claim about the tunnel.
- Gap of two layers' accuracies: Newcombe's (1998) score interval for a difference of paired
  proportions (his method 10: Wilson intervals of the two accuracies combined with the phi
  correlation of the 2x2 table, no continuity correction).
- The validation-chosen layer: the argmax of the probes' validation accuracy (``val_acc``: the
  lbfgs solver's accuracy of its chosen L2 on its validation split, held out of the probe's
  training split; no test image is used), the earlier layer on ties. The ``sklearn`` and
  ``paper`` solvers have no validation split: the choice is reported unavailable (``val_chosen_layer``
  empty, ``val_selection`` says why).

Failed probes (probe/failure.py) are missing: every comparison is among the other layers, the
row counts them (``n_failed_layers``, ``failed_layers``), and without the last layer the gaps to
it are NaN and ``tunnel`` None (undecided).

Tunnel rules (``metrics.tunnel_rule``): ``paper``, the papers' argmax rule (a tunnel iff the best
layer is not the last and beats it, by however little); ``significant``, a tunnel iff in
addition the last layer is significantly below the best (McNemar p < alpha).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunnelscope.metrics.paired import accuracy_interval, first_argmax, mcnemar_p, paired_difference_interval
from tunnelscope.metrics.tunnel import CELL_FACTS, failed_layers
from tunnelscope.probe.predictions import correct


def validation_choice(probe_rows: pd.DataFrame) -> tuple[int | None, str]:
    """(index into ``probe_rows`` of the layer of highest validation accuracy, earliest on ties,
    or None; how it was chosen). ``probe_rows``: one eval set's probe rows in layer order."""
    solver = probe_rows.solver.iloc[0] if "solver" in probe_rows else "this"
    if "val_acc" not in probe_rows or probe_rows.val_acc.isna().all():
        return None, f"unavailable: the {solver} solver has no validation split"
    return first_argmax(probe_rows.val_acc.to_numpy()), "probe validation split (held out of the probe's train split)"


def _layer_list(layers) -> str:
    return ",".join(str(int(layer)) for layer in layers)


def best_layer_row(probe_rows: pd.DataFrame, predictions: pd.DataFrame, alpha: float, tunnel_rule: str) -> dict:
    """The answer for one (cell, OOD set) from its probe rows and its predictions table, among
    the layers whose probes did not fail."""
    probe_rows = probe_rows.sort_values("layer")
    n_classes, solver, num_layers = int(probe_rows.n_classes.iloc[0]), probe_rows.solver.iloc[0], len(probe_rows)
    failed = failed_layers(probe_rows)
    lost = probe_rows.layer.to_numpy()[failed]
    probe_rows = probe_rows[~failed]
    layers, names = probe_rows.layer.to_numpy(), probe_rows.layer_name.to_numpy()
    hits = correct(predictions, layers) if len(layers) else np.zeros((len(predictions), 0), dtype=bool)
    n = len(hits)
    confidence = 1.0 - alpha
    accuracy = hits.mean(0)
    best = first_argmax(accuracy) if len(layers) else None
    last = len(layers) - 1 if not failed[-1] else None
    p_values = np.array([mcnemar_p(hits[:, best], hits[:, i]) for i in range(len(layers))])
    tied = [layers[i] for i in range(len(layers)) if p_values[i] >= alpha]

    def at(prefix: str, i: int | None) -> dict:
        if i is None:
            return {f"{prefix}_layer": pd.NA, f"{prefix}_layer_name": None} | {
                f"{prefix}_acc{s}": float("nan") for s in ("", "_ci_low", "_ci_high")
            }
        low, high = accuracy_interval(int(hits[:, i].sum()), n, confidence)
        return {
            f"{prefix}_layer": int(layers[i]),
            f"{prefix}_layer_name": str(names[i]),
            f"{prefix}_acc": float(accuracy[i]),
            f"{prefix}_acc_ci_low": low,
            f"{prefix}_acc_ci_high": high,
        }

    def gap(prefix: str, i: int | None) -> dict:
        known = i is not None and last is not None
        diff, low, high = (
            paired_difference_interval(hits[:, i], hits[:, last], confidence) if known else (float("nan"),) * 3
        )
        p = mcnemar_p(hits[:, i], hits[:, last]) if known else float("nan")
        return {f"gap_{prefix}_last": diff, f"gap_{prefix}_last_ci_low": low, f"gap_{prefix}_last_ci_high": high} | {
            f"{prefix}_vs_last_p": p
        }

    chosen, selection = validation_choice(probe_rows) if len(layers) else (None, "unavailable: every probe failed")
    tunnel = None  # undecided without the last layer
    if last is not None:
        significant = bool(accuracy[best] > accuracy[last] and p_values[last] < alpha)
        argmax_tunnel = bool(best < last and accuracy[best] > accuracy[last])
        tunnel = argmax_tunnel if tunnel_rule == "paper" else argmax_tunnel and significant
    return {
        "solver": solver,
        "num_layers": num_layers,
        "n_failed_layers": len(lost),
        "failed_layers": _layer_list(lost),
        "n_test": n,
        "n_classes": n_classes,
        "chance": 1.0 / n_classes,
        **at("best", best),
        "indistinguishable_layers": _layer_list(tied),
        "n_indistinguishable": len(tied),
        **at("val_chosen", chosen),
        "val_selection": selection,
        "val_chosen_score": float(probe_rows.val_acc.iloc[chosen]) if chosen is not None else float("nan"),
        **at("last", last),
        **gap("best", best),
        **gap("val_chosen", chosen),
        "tunnel_rule": tunnel_rule,
        "alpha": alpha,
        "confidence": confidence,
        "tunnel": tunnel,
    }


def best_layers(
    probes: pd.DataFrame, predictions: dict[str, pd.DataFrame], cell_info: dict, params: dict
) -> pd.DataFrame:
    """One row per OOD set of one cell (in ``params['ood_sets']`` order) from its probe table
    (every eval set, one solver) and its predictions tables by eval set; ``params`` holds
    ood_sets, alpha and tunnel_rule (metrics settings). The cell's variables and facts are
    columns, as in the metrics table."""
    rows = []
    for index, eval_set in enumerate(params["ood_sets"], start=1):
        rows_of_set = probes[probes.eval_set == eval_set]
        if rows_of_set.empty or eval_set not in predictions:
            raise ValueError(f"OOD set {eval_set}: no probe rows or no predictions")
        row = best_layer_row(rows_of_set, predictions[eval_set], params["alpha"], params["tunnel_rule"])
        rows.append({"ood_set": eval_set, "ood_index": index, **row})
    table = pd.DataFrame(rows)
    for key in CELL_FACTS:
        table[key] = cell_info.get(key)
    return table
