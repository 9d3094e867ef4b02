"""Mean and confidence interval across seeds: the one implementation every table and figure uses.

A cell's seed repeats an experiment rather than changing it, so results are reported per
*backbone* (the cell without its seed): the mean over seeds and a two-sided Student-t interval
on that mean, mean ± t_{(1+c)/2, n-1} · s / √n with s the sample standard deviation of the n seed
values and c the confidence (0.95 by default). With one seed the interval is undefined and
comes out NaN; consumers print or draw nothing for it.

    >>> from tunnelscope.metrics.seeds import seed_summary
    >>> summary = seed_summary(metrics, ["arch", "id_dataset", "resolution", "augmentation", "ood_set"], ["ood_retained", "pearson"])
    >>> summary[["ood_retained", "ood_retained_ci_low", "ood_retained_ci_high", "n_seeds"]]
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from tunnelscope.metrics.tunnel import BACKBONE_FACTS, strength
from tunnelscope.registry import CELL_VARIABLES, SEED_SUMMARISED_METRICS

SEED = "seed"
CONFIDENCE = 0.95
# A backbone: the cell variables other than the seed.
BACKBONE_VARIABLES = [v for v in CELL_VARIABLES if v != SEED]


def half_width(sd, n, confidence: float = CONFIDENCE):
    """Half the width of the t-interval of a mean of ``n`` values with sample SD ``sd``
    (NaN where n < 2); scalars or arrays."""
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        quantile = stats.t.ppf((1 + confidence) / 2, np.where(n >= 2, n - 1, np.nan))
        return quantile * np.asarray(sd, dtype=float) / np.sqrt(n)


def t_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite ``values``; low and high NaN with fewer than two."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(values.mean())
    half = float(half_width(values.std(ddof=1) if len(values) > 1 else np.nan, len(values), confidence))
    return mean, mean - half, mean + half, len(values)


def seed_summary(
    frame: pd.DataFrame, keys: list[str], columns: list[str], confidence: float = CONFIDENCE
) -> pd.DataFrame:
    """One row per distinct ``keys`` (in order of first appearance) summarising its seeds.

    Columns: ``keys``, ``n_seeds`` (rows in the group), then for each of ``columns`` its mean
    under the same name and ``NAME_ci_low`` / ``NAME_ci_high``, the t-interval of that mean at
    ``confidence``, from the group's finite values (NaN with fewer than two). Booleans average
    to the fraction of seeds where they hold.

    Each group must hold one row per seed: when a ``seed`` column repeats a value within a group,
    ``keys`` miss a variable (an OOD set, a layer) and a ValueError says which group. Average
    over such a variable first if that is what is meant.
    """
    keys, columns = list(keys), list(columns)
    missing = [c for c in keys + columns if c not in frame.columns]
    if missing:
        raise KeyError(f"seed_summary: no column {missing[0]!r}")
    if SEED in frame.columns:
        repeated = frame.duplicated(keys + [SEED], keep=False)
        if repeated.any():
            first = frame[repeated].iloc[0]
            raise ValueError(
                f"seed_summary: seed {first[SEED]} occurs more than once for {dict(first[keys])}; the keys miss a variable"
            )
    values = frame[keys].assign(**{c: pd.to_numeric(frame[c], errors="raise").astype(float) for c in columns})
    groups = values.groupby(keys, sort=False, dropna=False)
    mean, sd, n = groups[columns].mean(), groups[columns].std(ddof=1), groups[columns].count()
    out = pd.DataFrame({"n_seeds": groups.size()})
    for column in columns:
        half = half_width(sd[column], n[column], confidence)
        out[column] = mean[column]
        out[f"{column}_ci_low"] = mean[column] - half
        out[f"{column}_ci_high"] = mean[column] + half
    return out.reset_index()


def several_seeds(frame: pd.DataFrame) -> bool:
    """Whether any backbone of ``frame`` has two or more seeds."""
    if SEED not in frame.columns or frame.empty:
        return False
    return bool(frame.groupby(BACKBONE_VARIABLES, sort=False, dropna=False)[SEED].nunique().max() > 1)


# The aggregate tables' seed summaries: (what identifies a row besides the backbone, what is
# summarised; the metrics' from registry.METRICS). Columns absent from a table are skipped.
_FACTS = [*BACKBONE_FACTS, "num_layers"]
SUMMARIES = {
    "metrics": (["ood_set", "ood_index", *_FACTS], list(SEED_SUMMARISED_METRICS)),
    "curves": (
        ["eval_set", "role", "pooling", "solver", "layer", "layer_name", "relative_depth", "dim", "n_classes"],
        ["test_acc", "train_acc", "val_acc"],
    ),
    "layer_stats": (["layer"], ["numerical_rank", "rankme", "rankme_cov", "nc1", "cka_to_last"]),
}


def summarise(name: str, table: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """The seed summary of one aggregate table (``SUMMARIES``): per backbone and row identity,
    mean and interval of each result column. The metrics summary also carries Masarczyk's
    tunnel starts (``id_start_*``, ``id_tunnel_length_*``) and each backbone's ``strength``
    from its seed-mean % OOD retained averaged over its OOD sets."""
    identity, measured = SUMMARIES[name]
    keys = [c for c in BACKBONE_VARIABLES + identity if c in table.columns]
    columns = [c for c in measured if c in table.columns]
    columns += (
        [c for c in table.columns if c.startswith(("id_start_", "id_tunnel_length_"))] if name == "metrics" else []
    )
    summary = seed_summary(table, keys, columns, confidence)
    if name == "metrics" and len(summary):
        mean_retained = summary.groupby(BACKBONE_VARIABLES, sort=False, dropna=False).ood_retained.transform("mean")
        summary["strength"] = mean_retained.map(strength)
    return summary
