"""One level pair's paired test, at the rows and at the backbone pairs, and the verdict rule.

Means, Cliff's delta and the Wilcoxon signed-rank test over the matched pairs (the paper's unit,
every row), the same over the backbone pairs with the sign test, and ``judge``: Holm's correction
over a target's tests, ``significant`` and ``verdict`` at ``analysis.unit`` (docs/protocol.md
"The unit of analysis").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from tunnelscope.analysis.effect_sizes import (
    cliffs_delta,
    cliffs_magnitude,
    cluster_delta_interval,
    holm,
    per_seed_interval,
)
from tunnelscope.analysis.table import BACKBONE_ID
from tunnelscope.metrics.seeds import CONFIDENCE, SEED


def paired_test(
    row: dict,
    pair: pd.DataFrame,
    before: pd.Series,
    after: pd.Series,
    alpha: float,
    note: str,
    confidence: float = CONFIDENCE,
    n_resamples: int = 2000,
) -> dict:
    """Means, Cliff's delta and the Wilcoxon test over the matched pairs, so all three compare
    like with like (and the t-interval across seeds of the delta within each seed's pairs), and
    the same at the backbone level (``backbone_level``); without pairs, means and delta over all
    rows of the two levels, no test."""
    target = row["target"]
    row = {**row, "n_pairs": len(pair)}
    if len(pair):
        before, after = pair[f"{target}_from"], pair[f"{target}_to"]
    elif len(before) == 0 or len(after) == 0:
        return {**row, "note": "not estimable: a level has no rows"}
    delta = cliffs_delta(after, before)
    row.update(
        mean_from=float(before.mean()),
        mean_to=float(after.mean()),
        cliffs_delta=delta,
        abs_delta=abs(delta),
        magnitude=cliffs_magnitude(delta),
    )
    if len(pair) == 0:
        return {**row, "note": "no matched pairs: means and delta over all rows of each level, no test"}
    seeds = per_seed_interval(pair, lambda g: cliffs_delta(g[f"{target}_to"], g[f"{target}_from"]), confidence)
    # delta lies in [-1, 1]; a t-interval over a few seeds can reach past that.
    row.update(
        n_seeds=seeds["n_seeds"], delta_ci_low=max(seeds["ci_low"], -1.0), delta_ci_high=min(seeds["ci_high"], 1.0)
    )
    x, y = after.to_numpy(), before.to_numpy()
    p = 1.0 if np.allclose(x - y, 0) else float(stats.wilcoxon(x, y).pvalue)
    row.update(
        wilcoxon_p=p, pairs_up=int((x > y).sum()), pairs_down=int((x < y).sum()), _row_shift=_signed_rank_sum(x - y)
    )
    clusters = pair[f"{BACKBONE_ID}_from"].astype(str) + " " + pair[f"{BACKBONE_ID}_to"].astype(str)
    low, high = cluster_delta_interval(x, y, clusters, n_resamples)
    row.update(delta_cluster_low=low, delta_cluster_high=high, **backbone_level(pair, target))
    if row["n_backbone_pairs"] and 2.0 / 2 ** row["n_backbone_pairs"] >= alpha:
        floor = f"{row['n_backbone_pairs']} backbone pairs: a two-sided Wilcoxon p cannot fall below {2.0 / 2 ** row['n_backbone_pairs']:.3g}"
        note = f"{note}; {floor}" if note else floor
    return {**row, "note": note}


def backbone_pairs(pair: pd.DataFrame, target: str) -> pd.DataFrame:
    """One row per backbone pair (``_backbone_from``, ``_backbone_to``): the target of each side
    averaged over the pair's matched OOD sets within a seed, then over the seeds. Seeds are
    averaged, not paired as units of their own: they replicate one backbone pair, so counting
    each would overstate the independent pairs as counting OOD sets does."""
    keys = [f"{BACKBONE_ID}_from", f"{BACKBONE_ID}_to"]
    columns = [f"{target}_from", f"{target}_to"]
    within = pair.groupby(keys + ([SEED] if SEED in pair.columns else []), sort=False)[columns].mean()
    return within.groupby(level=keys, sort=False).mean()


def backbone_level(pair: pd.DataFrame, target: str) -> dict:
    """Over the backbone pairs of ``pair``: their count, means of each side, how many move up
    and down, the two-sided Wilcoxon signed-rank p (exact for small n; 1 when no pair moves)
    and the sign test's (exact binomial of up against down)."""
    means = backbone_pairs(pair, target)
    before, after = means[f"{target}_from"].to_numpy(), means[f"{target}_to"].to_numpy()
    diff = after - before
    up, down = int((diff > 0).sum()), int((diff < 0).sum())
    moved = not np.allclose(diff, 0)
    return {
        "n_backbone_pairs": len(means),
        "backbone_mean_from": float(before.mean()) if len(means) else float("nan"),
        "backbone_mean_to": float(after.mean()) if len(means) else float("nan"),
        "backbone_up": up,
        "backbone_down": down,
        "backbone_p": float(stats.wilcoxon(diff).pvalue) if moved else 1.0,
        "backbone_sign_p": float(stats.binomtest(up, up + down).pvalue) if up + down else 1.0,
        "_backbone_shift": _signed_rank_sum(diff) if moved else 0.0,
    }


def _signed_rank_sum(diff: np.ndarray) -> float:
    """W+ - W- of the Wilcoxon signed-rank test (zeros dropped): the direction its p is about."""
    diff = diff[diff != 0]
    return float((np.sign(diff) * stats.rankdata(np.abs(diff))).sum())


def judge(tests: pd.DataFrame, alpha: float, unit: str) -> pd.DataFrame:
    """``backbone_p_holm`` (Holm over the tests of each target), ``unit``, ``significant`` and
    ``verdict`` of paired test rows.

    The verdict rule, at the unit (backbone: Holm-adjusted backbone p and backbone pairs; row:
    the uncorrected row p and row pairs, as the paper tests). The reference direction is that of
    the rows' Cliff's delta (its mean difference where delta is 0): what a table of row-level
    effects reports. "holds": p < alpha in the reference direction; "opposite": p < alpha the
    other way; "direction only": not significant, but more than half of the pairs move the
    reference way; "not supported": otherwise (and wherever the rows show no direction)."""
    if tests.empty or "backbone_p" not in tests.columns:
        return tests.assign(unit=unit)
    tests = tests.copy()
    tests["backbone_p_holm"] = np.nan
    for _, index in tests.groupby("target", sort=False).groups.items():
        tests.loc[index, "backbone_p_holm"] = holm(tests.loc[index, "backbone_p"])
    at_backbone = unit == "backbone"
    p = tests.backbone_p_holm if at_backbone else tests.wilcoxon_p
    tests["unit"] = unit
    tests["significant"] = (p < alpha).where(p.notna())
    tests["verdict"] = [_verdict(row, at_backbone, alpha) for _, row in tests.iterrows()]
    return tests


def _verdict(row: pd.Series, at_backbone: bool, alpha: float) -> str:
    p = row.backbone_p_holm if at_backbone else row.wilcoxon_p
    if pd.isna(p):
        return ""
    reference = np.sign(row.cliffs_delta) or np.sign(row.mean_to - row.mean_from)
    if reference == 0:
        return "not supported"
    shift = row["_backbone_shift"] if at_backbone else row["_row_shift"]
    up, down = (row.backbone_up, row.backbone_down) if at_backbone else (row.pairs_up, row.pairs_down)
    n = row.n_backbone_pairs if at_backbone else row.n_pairs
    if p < alpha:
        return "holds" if np.sign(shift) == reference else "opposite"
    return "direction only" if (up if reference > 0 else down) > n / 2 else "not supported"
