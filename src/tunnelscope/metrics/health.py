"""Training health: did a cell's backbone learn? (docs/protocol.md, "Training health").

A backbone that stayed near chance has layers that carry little, and its probe curves still give
tunnel metrics (often a "strong" tunnel); such cells are flagged ``trained: false`` in the
``cells`` and ``metrics`` tables and left out of the study-level analysis unless
``analysis.include_untrained``. Computed after training, from ``cell.json`` and
``train_log.csv``, so changing the rule never retrains anything.

Probe health: a layer whose probe failed (probe/failure.py) is listed by ``probe_failure_lines``
from the probe curves, as the training health is from the cells.
"""

from __future__ import annotations

import math

import pandas as pd

from tunnelscope.registry import CELL_VARIABLES, cell_id

PUBLISHED = "published weights"
DEFAULT_SETTINGS = {"chance_margin": 0.15, "loss": True}


def chance_threshold(id_classes: int, chance_margin: float) -> float:
    """The lowest ID test accuracy that counts as trained: chance (1 / classes) plus
    ``chance_margin`` of the way from chance to perfect accuracy."""
    chance = 1.0 / id_classes
    return chance + chance_margin * (1.0 - chance)


def loss_problem(train_loss) -> str:
    """Why a per-epoch train-loss series shows no learning, or "": a non-finite epoch, a last
    epoch above the first, or no later epoch below the first (needs two epochs or more)."""
    losses = [float(v) for v in train_loss]
    for epoch, value in enumerate(losses, start=1):
        if not math.isfinite(value):
            return f"train loss not finite in epoch {epoch}"
    if len(losses) < 2:
        return ""
    first, last = losses[0], losses[-1]
    if last > first:
        return f"train loss diverged: last epoch {last:.4g} > first {first:.4g}"
    if min(losses[1:]) >= first:
        return f"train loss never fell below its first epoch's {first:.4g}"
    return ""


def training_health(cell_info: dict, train_log: pd.DataFrame, settings: dict | None = None) -> dict:
    """``{"trained": bool, "untrained_reason": str}`` of one cell from its cell.json and
    train_log.csv; ``settings`` are ``metrics.health`` (chance_margin, loss). Published
    backbones (no test accuracy of their own, no log) count as trained."""
    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    accuracy = cell_info.get("test_acc")
    if accuracy is None:
        return {"trained": True, "untrained_reason": PUBLISHED}
    reasons = []
    threshold = chance_threshold(int(cell_info["id_classes"]), settings["chance_margin"])
    if not accuracy >= threshold:  # NaN counts as untrained
        chance = 1.0 / int(cell_info["id_classes"])
        reasons.append(
            f"ID test accuracy {accuracy:.3f} is below {threshold:.3f} "
            f"(chance {chance:.3f} + metrics.health.chance_margin {settings['chance_margin']:g} of the rest)"
        )
    if settings["loss"] and "train_loss" in train_log.columns:
        problem = loss_problem(train_log.sort_values("epoch").train_loss)
        if problem:
            reasons.append(problem)
    return {"trained": not reasons, "untrained_reason": "; ".join(reasons)}


def row_cells(table: pd.DataFrame) -> pd.Series:
    """The cell id of every row of a table holding the cell variables."""
    return pd.Series([cell_id(**{k: row[k] for k in CELL_VARIABLES}) for _, row in table.iterrows()], index=table.index)


def study_rows(table: pd.DataFrame, include_untrained: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """(the rows the study-level analysis uses, the cells it leaves out): every row with
    ``include_untrained`` or without a ``trained`` column (a table from elsewhere), else the
    rows of trained cells."""
    if include_untrained or "trained" not in table.columns or table.empty:
        return table, []
    trained = table.trained.astype(bool)
    left_out = list(dict.fromkeys(row_cells(table[~trained])))
    return table[trained].reset_index(drop=True), left_out


def health_lines(cells: pd.DataFrame, include_untrained: bool = False) -> list[str]:
    """What the paper page says about training health: one line for all-trained, else one per
    untrained cell with its reason, after a line on whether the analysis left them out."""
    if "trained" not in cells.columns:
        return []
    bad = cells[~cells.trained.astype(bool)]
    if bad.empty:
        every = "the one cell" if len(cells) == 1 else f"all {len(cells)} cells"
        return [f"Training health: {every} trained (docs/protocol.md, Training health)."]
    fate = (
        "kept in the study-level analysis (analysis.include_untrained: true)"
        if include_untrained
        else "left out of the study-level analysis, tables and summary figures (analysis.include_untrained: false)"
    )
    head = f"Training health: {len(bad)} of {len(cells)} cells did not train and are {fate}:"
    return [head, *(f"{cell}: {reason}" for cell, reason in zip(row_cells(bad), bad.untrained_reason))]


def probe_failure_lines(curves: pd.DataFrame) -> list[str]:
    """What the paper page says about probe health, from the aggregated probe curves: one line
    when every probe fitted, else one per failed probe (cell, eval set, solver, layer, reason)
    after a line saying they count as missing."""
    if "failure" not in curves.columns or curves.empty:
        return []
    bad = curves[curves.failure.fillna("").astype(str) != ""]
    if bad.empty:
        return [f"Probe health: all {len(curves)} probes fitted (docs/protocol.md, Failed probes)."]
    head = (
        f"Probe health: {len(bad)} of {len(curves)} probes failed; their accuracies are missing (NaN) and the "
        "metrics are computed over the other layers (n_failed_layers, failed_layers in the metrics tables):"
    )
    return [
        head,
        *(
            f"{cell}, {row.eval_set} ({row.solver}) layer {row.layer} ({row.layer_name}): {row.failure}"
            for cell, row in zip(row_cells(bad), bad.itertuples())
        ),
    ]
