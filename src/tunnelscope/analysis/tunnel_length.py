"""Tunnel length against depth and width, Masarczyk et al. (2023) style, over the MLP cells.

The tunnel starts at the first layer whose ID probe accuracy reaches a fraction (0.95) of the
last layer's (``metrics.tunnel.id_tunnel_start``); its length is L - start over the L probed layers.
Per (setting, depth, width) the values of the cells that differ only in their seed are summarised
by their mean and a Student-t interval of that mean; the figures draw exactly these tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from tunnelscope.registry import CELL_VARIABLES, MLP_NAME, parse_mlp

# A setting = the cell variables other than the architecture and the seed: one figure row each.
SETTING = ["id_dataset", "resolution", "augmentation"]
MLP_KEYS = [*SETTING, "depth", "width"]
LENGTH_METRICS = {"tunnel_length": "tunnel length (layers)", "tunnel_fraction": "tunnel length / probed layers"}


def seed_interval(values, confidence: float = 0.95) -> dict:
    """Mean of ``values`` (one per seed) and the Student-t interval of that mean; no interval
    (NaN) from a single seed, a zero-width one when all seeds agree."""
    values = np.asarray(values, dtype=float)
    n, mean = len(values), float(values.mean())
    if n < 2:
        return {"mean": mean, "ci_low": float("nan"), "ci_high": float("nan"), "n_seeds": n}
    sem = float(stats.sem(values))
    low, high = (mean, mean) if sem == 0 else stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return {"mean": mean, "ci_low": float(low), "ci_high": float(high), "n_seeds": n}


def _mlp_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of MLP cells, with their depth and hidden width parsed from the arch name."""
    mlp = table[table.arch.map(lambda a: MLP_NAME.fullmatch(str(a)) is not None)].copy()
    shape = mlp.arch.map(parse_mlp)
    mlp["depth"] = shape.map(lambda s: s[0]).astype(int)
    mlp["width"] = shape.map(lambda s: s[1]).astype(int)
    return mlp


def cell_table(metrics: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """One row per MLP cell: depth, width, probed layers L, ID-rule tunnel start and length (in
    layers and as a fraction of L) at ``threshold``, and the last layer's ID probe accuracy."""
    start, length = (f"{name}_{round(threshold * 100)}" for name in ("id_start", "id_tunnel_length"))
    missing = [c for c in (start, length) if c not in metrics.columns]
    if missing:
        raise ValueError(
            f"the metrics table has no {', '.join(missing)}: add {threshold} to metrics.id_start_thresholds"
        )
    # The ID rule reads the ID curve only, so every OOD row of a cell carries the same values.
    cells = _mlp_columns(metrics.drop_duplicates(list(CELL_VARIABLES)))
    if cells.empty:
        raise ValueError("the study has no MLP cells (arch mlpDEPTH-wWIDTH) to plot tunnel lengths of")
    table = cells[[*CELL_VARIABLES, "depth", "width", "id_classes", "num_layers", "id_last_acc"]].assign(
        threshold=threshold,
        id_start=cells[start].astype(int),
        tunnel_length=cells[length].astype(int),
        tunnel_fraction=cells[length] / cells.num_layers,
    )
    return table.sort_values([*MLP_KEYS, "seed"]).reset_index(drop=True)


def summary_table(cells: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Per (setting, depth, width) and metric: mean and interval across seeds (the plotted values)."""
    rows = []
    for key, group in cells.groupby(MLP_KEYS, sort=True):
        for metric in LENGTH_METRICS:
            rows.append({**dict(zip(MLP_KEYS, key)), "metric": metric, **seed_interval(group[metric], confidence)})
    return pd.DataFrame(rows)


def rank_table(layer_stats: pd.DataFrame, cells: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Per (setting, depth, width, layer): numerical rank of the ID embeddings across seeds, with
    the cells' class count and mean ID-rule tunnel start (for the reference lines)."""
    # The cells of the tunnel table, nothing else.
    mlp = _mlp_columns(layer_stats).merge(cells[list(CELL_VARIABLES)], on=list(CELL_VARIABLES))
    starts = (
        cells.groupby(MLP_KEYS)
        .agg(id_classes=("id_classes", "first"), mean_id_start=("id_start", "mean"))
        .reset_index()
    )
    rows = []
    for key, group in mlp.groupby([*MLP_KEYS, "layer"], sort=True):
        rows.append({**dict(zip([*MLP_KEYS, "layer"], key)), **seed_interval(group.numerical_rank, confidence)})
    return pd.DataFrame(rows).merge(starts, on=MLP_KEYS, how="left")
