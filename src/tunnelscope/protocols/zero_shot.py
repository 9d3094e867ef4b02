"""Zero-shot transfer (Uselis & Oh, ICLR 2025) beside the paper's protocol, on the same embeddings.

The probes trained on the ID set are scored on a shifted copy of the ID test split, and the layer
is chosen on a small seeded validation part of that copy. Beside it, the paper's protocol (a probe
trained on the shifted set itself) is scored on the same held-out rows, from its stored weights,
so the two differ only in the protocol. Torch-free: probes are stored as weight matrices
(``probe.job.write_weights``), and scoring them is one product per layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tunnelscope.data.splits import stratified_split
from tunnelscope.features.store import layer_path, read_embeddings
from tunnelscope.metrics.seeds import (
    BACKBONE_VARIABLES,
    CONFIDENCE,
    seed_summary,
)
from tunnelscope.registry import CELL_VARIABLES

ZERO_SHOT_STREAM = 3141  # the random stream of the shifted validation split (zero_shot.split_seed)


def probe_logits(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Logits on raw features ``x`` (n, d) of a probe stored by probe.job.write_weights."""
    return x.astype(np.float32) @ weights[:-1] + weights[-1]


def _accuracy(weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float((probe_logits(weights, x).argmax(1) == y).mean()) if len(y) else float("nan")


def zero_shot_layers(
    id_probes: pd.DataFrame, id_weights, shifted_weights, clean_dir: str | Path, shifted_dir: str | Path, params: dict
) -> pd.DataFrame:
    """One row per layer, all on the test rows outside the validation part (``rest``) unless
    named: the ID probe on the clean ID test rows (``clean_test_acc``), on their shifted copies
    (``zero_shot_test_acc``; ``zero_shot_val_acc`` on the validation part), and the shifted-set
    probe on the shifted rows (``shifted_probe_test_acc``). ``id_weights`` / ``shifted_weights``:
    np.load'ed .npz files; ``clean_dir`` / ``shifted_dir`` the two sets' embedding directories."""
    rows, split = [], None
    for probe in id_probes.sort_values("layer").itertuples():
        key = f"layer_{probe.layer:03d}"  # the probe's entry in the weights (probe.job.probe_layers)
        path = layer_path(shifted_dir, params["pooling"], probe.layer)
        _, x, y, _ = read_embeddings(path, select=lambda labels, splits: splits == "test")
        _, clean, clean_y, _ = read_embeddings(
            layer_path(clean_dir, params["pooling"], probe.layer), select=lambda labels, splits: splits == "test"
        )
        if split is None:
            rest, val = stratified_split(y, params["val_fraction"], params["split_seed"], ZERO_SHOT_STREAM)
            split = (rest, val, y)
        if not (np.array_equal(split[2], y) and np.array_equal(clean_y, y)):  # same images, same order
            raise ValueError(f"{path}: test rows differ from the first layer's or from the clean set's")
        rest, val, _ = split
        w_id, w_shifted = id_weights[key], shifted_weights[key]
        if w_id.shape[0] != x.shape[1] + 1:
            raise ValueError(f"{path}: dim {x.shape[1]}, but the ID probe of {key} takes {w_id.shape[0] - 1}")
        rows.append(
            {
                **{k: params[k] for k in (*CELL_VARIABLES, "eval_set")},
                "layer": probe.layer,
                "layer_name": probe.layer_name,
                "relative_depth": probe.relative_depth,
                "clean_test_acc": _accuracy(w_id, clean[rest], y[rest]),
                "zero_shot_val_acc": _accuracy(w_id, x[val], y[val]),
                "zero_shot_test_acc": _accuracy(w_id, x[rest], y[rest]),
                "shifted_probe_test_acc": _accuracy(w_shifted, x[rest], y[rest]),
                "n_val": len(val),
                "n_test": len(rest),
            }
        )
    return pd.DataFrame(rows)


def zero_shot_summary(layers: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, shifted set): each protocol's chosen layer and its accuracy there.

    Zero-shot chooses the layer of best ``zero_shot_val_acc``, the deepest on ties (a small
    validation split ties often, and the first would favour early layers); the paper's protocol
    the first layer of best test accuracy of the shifted-set probe (its l_m, as in metrics).
    ``*_last_acc`` are the last layer's, ``zero_shot_oracle_*`` the best zero-shot test accuracy,
    which a validation split can at most find."""
    keys = [*CELL_VARIABLES, "eval_set"]
    rows = []
    for key, group in layers.sort_values("layer").groupby(keys, sort=False):
        group = group.reset_index(drop=True)
        n = len(group)
        chosen = n - 1 - int(group.zero_shot_val_acc.to_numpy()[::-1].argmax())
        oracle = n - 1 - int(group.zero_shot_test_acc.to_numpy()[::-1].argmax())
        paper = int(group.shifted_probe_test_acc.to_numpy().argmax())
        rows.append(
            {
                **dict(zip(keys, key)),
                "num_layers": n,
                "zero_shot_layer": int(group.layer[chosen]),
                "zero_shot_acc": group.zero_shot_test_acc[chosen],
                "zero_shot_last_acc": group.zero_shot_test_acc[n - 1],
                "zero_shot_oracle_layer": int(group.layer[oracle]),
                "zero_shot_oracle_acc": group.zero_shot_test_acc[oracle],
                "shifted_probe_layer": int(group.layer[paper]),
                "shifted_probe_acc": group.shifted_probe_test_acc[paper],
                "shifted_probe_last_acc": group.shifted_probe_test_acc[n - 1],
                "clean_last_acc": group.clean_test_acc[n - 1],
                # the intermediate-layer finding of Uselis & Oh: the chosen layer is <= L - 2
                "zero_shot_before_penultimate": chosen + 1 <= n - 2,  # positions 1..n
                "n_val": int(group.n_val[0]),
                "n_test": int(group.n_test[0]),
            }
        )
    return pd.DataFrame(rows)


ZERO_SHOT_VALUES = [
    "zero_shot_acc",
    "zero_shot_last_acc",
    "zero_shot_oracle_acc",
    "shifted_probe_acc",
    "shifted_probe_last_acc",
    "clean_last_acc",
    "zero_shot_layer",
    "shifted_probe_layer",
    "zero_shot_before_penultimate",
]
LAYER_VALUES = ["clean_test_acc", "zero_shot_val_acc", "zero_shot_test_acc", "shifted_probe_test_acc"]


def zero_shot_seeds(
    summary: pd.DataFrame, layers: pd.DataFrame, confidence: float = CONFIDENCE
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seed means with t-intervals (seeds.seed_summary) of the summary per backbone and shifted
    set, and of the per-layer accuracies per backbone, shifted set and layer."""
    keys = [*BACKBONE_VARIABLES, "eval_set"]
    return seed_summary(summary, [*keys, "num_layers"], ZERO_SHOT_VALUES, confidence), seed_summary(
        layers, [*keys, "layer"], LAYER_VALUES, confidence
    )
