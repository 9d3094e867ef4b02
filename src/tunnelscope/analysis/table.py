"""The analysis table: reading it, checking it, and coding its variables for the models.

One row per (backbone, OOD set) with the targets (registry.ANALYSIS_TARGETS), the eight SHAP
variables and, for paired comparisons, whatever identifies a row (docs/protocol.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tunnelscope import io
from tunnelscope.metrics.seeds import SEED
from tunnelscope.registry import ANALYSIS_TARGETS, CELL_VARIABLES

# The SHAP model's eight features, as in the paper.
VARIABLES = ("stem", "spatial_reduction", "family", "augmentation", "resolution", "id_classes", "gamma", "depth")
NUMERIC = ("stem", "spatial_reduction", "resolution", "id_classes", "gamma", "depth")
# Levels of ``family``, in the order of its SHAP code: the paper's CNN-vs-ViT, and MLPs
# (Masarczyk et al.'s), whose one-hot column exists only in tables that have them, so the paper's
# own fit is unchanged.
FAMILIES = ("cnn", "vit", "mlp")
# The column with_backbones adds, each row's backbone id; pairs carry it as _backbone_from / _backbone_to.
BACKBONE_ID = "_backbone"


class TableError(ValueError):
    """A malformed analysis table, naming the offending column."""


def read_analysis_table(path: str | Path) -> pd.DataFrame:
    """A metrics table (CSV or Parquet), or the paper's released table as published."""
    from tunnelscope.analysis.release import from_release, is_release_table

    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    table = io.read_table(path) if path.suffix == ".parquet" else io.read_csv(path)
    if is_release_table(table):
        table = from_release(table)
    return check_table(table)


def check_table(table: pd.DataFrame) -> pd.DataFrame:
    for column in ANALYSIS_TARGETS + VARIABLES:
        if column not in table.columns:
            raise TableError(f"column {column!r} is missing; needed: {', '.join(ANALYSIS_TARGETS + VARIABLES)}")
    for column in ANALYSIS_TARGETS + NUMERIC:
        if not pd.api.types.is_numeric_dtype(table[column]):
            raise TableError(f"column {column!r} must be numeric, found {table[column].dtype}")
    bad = sorted(set(table.family.astype(str)) - set(FAMILIES))
    if bad:
        raise TableError(f"column 'family' must hold {', '.join(FAMILIES)}, found {', '.join(bad)}")
    return table.reset_index(drop=True)


def augmentation_code(values: pd.Series) -> pd.Series:
    """0 = no augmentation, 1 = augmentation; accepts none/<name>, booleans or 0/1."""

    def code(v):
        if isinstance(v, str):
            return 0 if v.lower() in ("none", "no", "false", "0", "") else 1
        return int(bool(v))

    return values.map(code).astype(int)


def ordinal(values: pd.Series) -> pd.Series:
    """Sorted ordinal code 0..k-1 of the distinct values."""
    levels = sorted(values.unique())
    return values.map({v: i for i, v in enumerate(levels)}).astype(float)


def encode(table: pd.DataFrame) -> pd.DataFrame:
    """Model features: ordinal codes, and the family one-hot (CNN and ViT always, MLP if present)."""
    coded = table.assign(augmentation=augmentation_code(table.augmentation))
    features = pd.DataFrame({v: ordinal(coded[v]) for v in VARIABLES if v != "family"}, index=table.index)
    for family in FAMILIES:
        if family != "mlp" or (table.family == "mlp").any():
            features[f"family_{family}"] = (table.family == family).astype(float)
    return features


def target_values(table: pd.DataFrame, target: str) -> pd.Series:
    return table[target] / 100.0 if target == "ood_retained" else table[target]


def backbone_columns(table: pd.DataFrame) -> list[str]:
    """What identifies a backbone (a trained network less its seed) in an analysis table: the cell
    variables but the seed, and the SHAP variables (which identify it where those are absent)."""
    return [c for c in dict.fromkeys((*CELL_VARIABLES, *VARIABLES)) if c != SEED and c in table.columns]


def with_backbones(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with a ``_backbone`` id per row (rows of one backbone share it across OOD sets
    and seeds); without identifying columns every row is its own backbone."""
    if BACKBONE_ID in table.columns:
        return table
    columns = backbone_columns(table)
    if not columns:
        return table.assign(**{BACKBONE_ID: np.arange(len(table))})
    return table.assign(**{BACKBONE_ID: table.groupby(columns, sort=False, dropna=False).ngroup()})
