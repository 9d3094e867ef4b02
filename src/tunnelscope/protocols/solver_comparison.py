"""Solvers side by side: the tunnel metrics of one cell under each of its ``probe.solver`` list,
set beside the first solver's, on the same embeddings.
"""

from __future__ import annotations

import pandas as pd
from scipy import stats

from tunnelscope.metrics.seeds import (
    CONFIDENCE,
    several_seeds,
    t_interval,
)
from tunnelscope.metrics.tunnel import cell_metrics
from tunnelscope.registry import CELL_VARIABLES, SOLVER_COMPARED_METRICS


def solver_metrics(
    probes: pd.DataFrame, cell_info: dict, params: dict, predictions: dict[tuple[str, str], pd.DataFrame] | None = None
) -> pd.DataFrame:
    """The cell's tunnel metrics under each solver of its probe tables (a ``solver`` column);
    ``predictions`` by (solver, eval set), each solver's tunnels judged on its own."""
    predictions = predictions or {}
    return pd.concat(
        [
            cell_metrics(group, cell_info, params, {e: p for (s, e), p in predictions.items() if s == solver}).assign(
                solver=solver
            )
            for solver, group in probes.groupby("solver", sort=False)
        ],
        ignore_index=True,
    )


def _agreement(a: pd.Series, b: pd.Series) -> float:
    """Share of pairs where both solvers decided (no failed last-layer probe) and agree."""
    decided = a.notna() & b.notna()
    return float((a[decided] == b[decided]).mean()) if decided.any() else float("nan")


def solver_comparison(metrics: pd.DataFrame, reference: str, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """How each metric moves from the ``reference`` solver to every other one, over all
    (cell, OOD set) pairs: mean difference (other - reference), mean absolute difference, the
    Spearman correlation of the two (do they order backbones alike?), and how often they agree
    that there is a tunnel. Each metric of registry.SOLVER_COMPARED_METRICS must be a column."""
    missing = [m for m in SOLVER_COMPARED_METRICS if m not in metrics.columns]
    if missing:
        raise ValueError(f"solver comparison: the metrics table has no column {missing[0]!r} (registry.METRICS)")
    keys = [*CELL_VARIABLES, "ood_set"]
    seeds = several_seeds(metrics)
    ref = metrics[metrics.solver == reference]
    rows = []
    for solver, other in metrics[metrics.solver != reference].groupby("solver", sort=False):
        paired = ref.merge(other, on=keys, suffixes=("", "_other"))
        for metric in SOLVER_COMPARED_METRICS:
            a, b = paired[metric].astype(float), paired[f"{metric}_other"].astype(float)
            ok = a.notna() & b.notna()
            diff = (b - a)[ok]
            rho = (
                stats.spearmanr(a[ok], b[ok]).statistic
                if ok.sum() > 2 and a[ok].nunique() > 1 and b[ok].nunique() > 1
                else float("nan")
            )
            # with several seeds: the t-interval of the mean difference over the seeds' means
            _, low, high, n_seeds = (
                t_interval(diff.groupby(paired.seed[ok]).mean(), confidence)
                if seeds
                else (None, float("nan"), float("nan"), 1)
            )
            rows.append(
                {
                    "reference": reference,
                    "solver": solver,
                    "metric": metric,
                    "pairs": int(ok.sum()),
                    "seeds": n_seeds,
                    "mean_difference_ci_low": low,
                    "mean_difference_ci_high": high,
                    "reference_mean": float(a[ok].mean()),
                    "solver_mean": float(b[ok].mean()),
                    "mean_difference": float(diff.mean()),
                    "mean_abs_difference": float(diff.abs().mean()),
                    "spearman": float(rho),
                    "tunnel_agreement": _agreement(paired.tunnel, paired.tunnel_other),
                }
            )
    return pd.DataFrame(rows)
