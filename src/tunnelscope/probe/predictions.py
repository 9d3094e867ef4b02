"""The probes' per-image predictions: ``{eval_set}.predictions.parquet`` beside each probe table.

One row per test image in the test split's order: ``label`` (the true class), then the class the
probe of each layer predicted, one column per layer (``layer_column``). The probe table's
``test_acc`` of a layer is the mean of ``label == layer_NNN``; metrics.best_layers compares
layers on the same images from it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunnelscope.io import read_table


def layer_column(layer: int) -> str:
    """A layer's column in a predictions table."""
    return f"layer_{layer:03d}"


def prediction_table(labels: np.ndarray, predicted: dict[str, np.ndarray], n_classes: int) -> pd.DataFrame:
    """``label`` and the ``predicted`` columns as one table. int16 up to 32,767 classes, else
    int32: at ImageNet scale 50,000 rows x L layers x 2 bytes, 3.7 MB for 37 layers."""
    dtype = np.int16 if n_classes <= np.iinfo(np.int16).max else np.int32
    return pd.DataFrame({"label": labels, **predicted}).astype(dtype)


def correct(predictions: pd.DataFrame, layers) -> np.ndarray:
    """(images, layers) booleans: whether each layer's probe got each image right."""
    labels = predictions["label"].to_numpy()
    return np.stack([predictions[layer_column(layer)].to_numpy() == labels for layer in layers], axis=1)


def read_predictions(paths, probe_tables: list[pd.DataFrame]) -> dict[tuple[str, str], pd.DataFrame]:
    """Predictions tables by (solver, eval set): each path beside its probe job's table, the two
    lists in the same order (as the rules list them), the keys from the probe table's columns."""
    if len(paths) != len(probe_tables):
        raise ValueError(f"{len(paths)} predictions tables for {len(probe_tables)} probe tables")
    tables = {}
    for path, probes in zip(paths, probe_tables):
        if probes.empty:
            raise ValueError(f"{path}: its probe table has no rows to say whose predictions these are")
        tables[probes.solver.iloc[0], probes.eval_set.iloc[0]] = read_table(path)
    return tables
