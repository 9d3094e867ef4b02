"""Cross-grid analysis (Harun et al. 2024, Sec. 3.3 and App. C; docs/protocol.md).

Input: one row per (backbone, OOD set) with the targets ``ood_retained`` (percent), ``pearson``,
``alignment``, the eight SHAP variables and, for paired comparisons, whatever identifies a row:
the cell variables (arch, id_dataset, resolution, augmentation, seed), ``ood_set`` and
``ood_index``. Output: SHAP slopes with in-sample R^2, paired comparisons (over matched pairs,
one backbone of each level with all else equal: means, Cliff's delta and the Wilcoxon
signed-rank test) and per-level means with bootstrap 95% intervals, for the comparisons of
``analysis.comparisons``. Pairs always match on the seed; with several seeds, level means and
Cliff's delta also get a t-interval across seeds (``seeds.t_interval``).
Two units of analysis (``analysis.unit``, docs/protocol.md "The unit of analysis"): ``row``, the
paper's, takes every (backbone pair x OOD set x seed) row as an independent observation;
``backbone`` takes the backbone pair: each backbone's target is averaged over the pair's OOD sets
within a seed, then over the seeds (seeds are replicates of one backbone, nested in it), and the
Wilcoxon and sign tests run on those pairs, Holm-corrected across the comparisons of one target.
Both are always computed; the unit decides ``significant`` and ``verdict``. Cluster-bootstrap
intervals resample whole backbones (level means) or backbone pairs (Cliff's delta).

This module runs the comparisons and writes the outputs; the pieces live beside it: table.py
(reading and encoding the input), shap_slopes.py, effect_sizes.py (Cliff's delta, bootstraps,
Holm) and paired_tests.py (one paired comparison at both units, its verdict).
"""

from __future__ import annotations

import itertools
import logging
import numbers
from pathlib import Path

import numpy as np
import pandas as pd

from tunnelscope.analysis.effect_sizes import bootstrap_interval, cluster_bootstrap_interval, per_seed_interval
from tunnelscope.analysis.paired_tests import judge, paired_test
from tunnelscope.analysis.shap_slopes import shap_slopes
from tunnelscope.analysis.table import BACKBONE_ID, TableError, check_table, with_backbones
from tunnelscope.metrics.health import study_rows
from tunnelscope.metrics.seeds import CONFIDENCE, SEED
from tunnelscope.registry import ANALYSIS_TARGETS, CELL_VARIABLES, DERIVED_VARIABLES, SETTING_CHOICES

log = logging.getLogger("tunnelscope.analysis")

# Variables the automatic comparisons look at, in this order.
COMPARED = (
    "augmentation",
    "resolution",
    "id_dataset",
    "arch",
    "arch_family",
    "family",
    "stem",
    "spatial_reduction",
    "depth",
    "id_classes",
    "gamma",
)
DEFAULT_SETTINGS = {
    "comparisons": "auto",
    "shap_slope_normalisation": "none",
    "alpha": 0.05,
    "bootstrap_resamples": 2000,
    "seed_confidence": CONFIDENCE,
    "include_untrained": False,
    "unit": "backbone",
}
UNITS = SETTING_CHOICES["analysis.unit"]
# The columns of paired_tests.csv and level_means.csv, in this order.
PAIRED_TEST_COLUMNS = [
    "comparison",
    "variable",
    "target",
    "level_from",
    "level_to",
    "n_from",
    "n_to",
    "n_pairs",
    "mean_from",
    "mean_to",
    "wilcoxon_p",
    "significant",
    "cliffs_delta",
    "abs_delta",
    "magnitude",
    "n_seeds",
    "delta_ci_low",
    "delta_ci_high",
    "pairs_up",
    "pairs_down",
    "delta_cluster_low",
    "delta_cluster_high",
    "n_backbone_pairs",
    "backbone_mean_from",
    "backbone_mean_to",
    "backbone_up",
    "backbone_down",
    "backbone_p",
    "backbone_sign_p",
    "backbone_p_holm",
    "unit",
    "verdict",
    "note",
]
LEVEL_MEAN_COLUMNS = [
    "comparison",
    "variable",
    "level",
    "target",
    "n",
    "mean",
    "ci_low",
    "ci_high",
    "n_backbones",
    "cluster_ci_low",
    "cluster_ci_high",
    "n_seeds",
    "seed_ci_low",
    "seed_ci_high",
]


def _is_number(value) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, (bool, np.bool_))


def level_mask(column: pd.Series, level) -> pd.Series:
    """Rows at ``level``; numbers match within 0.1% (configs write gamma to two decimals)."""
    if _is_number(level) and pd.api.types.is_numeric_dtype(column):
        return pd.Series(np.isclose(column.astype(float), float(level), rtol=1e-3, atol=0.0), index=column.index)
    return column.astype(str) == str(level)


def select(table: pd.DataFrame, where: dict) -> pd.DataFrame:
    keep = pd.Series(True, index=table.index)
    for column, allowed in where.items():
        if column not in table.columns:
            raise TableError(f"comparison selects on column {column!r}, which the table lacks")
        keep &= np.logical_or.reduce([level_mask(table[column], v) for v in allowed])
    return table[keep]


def present_levels(column: pd.Series) -> list:
    """Distinct values: numbers ascending, others in order of first appearance (grid order)."""
    values = list(dict.fromkeys(column.dropna().tolist()))
    return sorted(values) if all(_is_number(v) for v in values) else values


def default_match(table: pd.DataFrame, variable: str) -> list[str]:
    """What a pair holds fixed by default: every cell variable present except the compared one
    and those that carry it (arch for architecture facts, id_dataset for the class count), plus
    the OOD set. Without the cell variable that carries them, the derived variables identify a
    backbone and are matched instead; gamma never is (it moves with architecture and data)."""
    carriers = set(DERIVED_VARIABLES.get(variable, ())) | {variable}
    match = [c for c in CELL_VARIABLES if c in table.columns and c not in carriers]
    for derived, carried_by in DERIVED_VARIABLES.items():
        if (
            derived not in carriers
            and derived != "gamma"
            and derived in table.columns
            and not all(c in table.columns for c in carried_by)
        ):
            match.append(derived)
    return match + [c for c in ("ood_set",) if c in table.columns]


def auto_comparisons(table: pd.DataFrame) -> list[dict]:
    """Every variable with two or more levels, every pair of its levels, default matching. A
    variable that splits the rows exactly as an earlier one does (depth and stem when the grid
    has two architectures) is the same comparison and is left out, with a log line. Where an
    architecture fact has several architectures per level, they pair shallower with shallower."""
    specs, seen = [], {}
    for variable in COMPARED:
        if variable not in table.columns or table[variable].nunique() < 2:
            continue
        groups = tuple(pd.factorize(table[variable].astype(str))[0])
        if groups in seen:
            log.info("comparison %s left out: it groups the rows exactly as %s", variable, seen[groups])
            continue
        seen[groups] = variable
        order = (
            {"pair_order": "depth"}
            if variable in DERIVED_VARIABLES and variable != "depth" and "depth" in table.columns
            else {}
        )
        specs.append({"name": variable, "variable": variable, **order})
    return specs


def pair_rows(
    low: pd.DataFrame, high: pd.DataFrame, match: list[str], pair_order: str | None
) -> tuple[pd.DataFrame, bool]:
    """One-to-one pairs: rows of the two levels with equal ``match`` values; where several share
    them, the k-th of one level (in ``pair_order``, else table order) pairs with the k-th of the
    other. Backbones are never averaged into one pair. Returns (pairs, whether any match value
    was shared, so that the pairing depended on that order)."""
    missing = [c for c in match if c not in low.columns]
    if missing:
        raise TableError(f"comparison matches on column {missing[0]!r}, which the table lacks")
    sides, shared = [], False
    for frame in (low, high):
        if pair_order:
            frame = frame.sort_values(pair_order, kind="stable")
        rank = frame.groupby(match, sort=False, dropna=False).cumcount()
        shared |= bool((rank > 0).any())
        sides.append(frame.assign(_rank=rank))
    return sides[0].merge(sides[1], on=[*match, "_rank"], suffixes=("_from", "_to")), shared


def comparison_match(table: pd.DataFrame, spec: dict) -> list[str]:
    """What a comparison's pairs hold fixed: its declared ``match`` or the default, and always
    the seed (unless the seed is what is compared), so that a seed-0 backbone pairs with the
    seed-0 backbone of the other level, never with another seed's."""
    match = list(spec.get("match") or default_match(table, spec["variable"]))
    if SEED in table.columns and spec["variable"] != SEED and SEED not in match:
        match.append(SEED)
    return match


def run_comparison(
    table: pd.DataFrame,
    spec: dict,
    alpha: float,
    n_resamples: int,
    confidence: float = CONFIDENCE,
    unit: str = "backbone",
) -> tuple[list[dict], list[dict]]:
    """(paired test rows, level mean rows) of one comparison; ``significant`` and ``verdict`` at
    ``unit``, Holm over this comparison's tests of a target (``comparisons`` redoes it over all)."""
    name, variable = spec["name"], spec["variable"]
    head = {"comparison": name, "variable": variable}
    if variable not in table.columns:
        return [{**head, "target": t, "note": f"not estimable: no column {variable}"} for t in ANALYSIS_TARGETS], []
    table = with_backbones(table)
    rows = select(table, spec.get("where", {}))
    present = present_levels(rows[variable])
    if spec.get("levels"):
        levels = [next((p for p in present if level_mask(pd.Series([p]), lv).iloc[0]), lv) for lv in spec["levels"]]
    else:
        levels = present
    means = [
        level_mean(rows[level_mask(rows[variable], level)], target, {**head, "level": level}, n_resamples, confidence)
        for level in levels
        for target in ANALYSIS_TARGETS
    ]
    if len(levels) < 2 and not spec.get("pairs"):
        return [{**head, "target": t, "note": "not estimable: single level"} for t in ANALYSIS_TARGETS], means
    pairs = spec.get("pairs") or list(itertools.combinations(levels, 2))
    match = comparison_match(table, spec)
    tests = []
    for lo, hi in pairs:
        a, b = rows[level_mask(rows[variable], lo)], rows[level_mask(rows[variable], hi)]
        lo, hi = (a[variable].iloc[0] if len(a) else lo), (b[variable].iloc[0] if len(b) else hi)
        matched, shared = pair_rows(a, b, match, spec.get("pair_order"))
        note = (
            f"several backbones per level share the matched values: paired in order of {spec.get('pair_order') or 'the grid'}"
            if shared
            else ""
        )
        head_pair = {**head, "level_from": lo, "level_to": hi}
        tests += [
            level_pair_test(a, b, matched, target, head_pair, note, alpha, confidence, n_resamples)
            for target in ANALYSIS_TARGETS
        ]
    return judge(pd.DataFrame(tests), alpha, unit).to_dict("records"), means


def level_mean(group: pd.DataFrame, target: str, head: dict, n_resamples: int, confidence: float) -> dict:
    """The mean of ``target`` over the rows of one level (``group``) that have it, with its
    bootstrap, cluster-bootstrap (backbones) and across-seeds intervals."""
    present = group.dropna(subset=[target])
    values = present[target].to_numpy(dtype=float)
    low, high = bootstrap_interval(values, n_resamples)
    cluster_low, cluster_high = cluster_bootstrap_interval(values, present[BACKBONE_ID], n_resamples)
    seeds = per_seed_interval(present, lambda g: g[target].mean(), confidence)
    return {
        **head,
        "target": target,
        "n": len(values),
        "mean": float(values.mean()) if len(values) else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "n_backbones": int(present[BACKBONE_ID].nunique()),
        "cluster_ci_low": cluster_low,
        "cluster_ci_high": cluster_high,
        "n_seeds": seeds["n_seeds"],
        "seed_ci_low": seeds["ci_low"],
        "seed_ci_high": seeds["ci_high"],
    }


def level_pair_test(
    a: pd.DataFrame,
    b: pd.DataFrame,
    matched: pd.DataFrame,
    target: str,
    head: dict,
    note: str,
    alpha: float,
    confidence: float,
    n_resamples: int,
) -> dict:
    """The paired test row of ``target`` between the rows of two levels (``a``, ``b``) and
    their ``matched`` pairs (``pair_rows``)."""
    pair = matched[
        [f"{target}_from", f"{target}_to", f"{BACKBONE_ID}_from", f"{BACKBONE_ID}_to"]
        + ([SEED] if SEED in matched.columns else [])
    ].dropna()
    row = {
        "comparison": head["comparison"],
        "variable": head["variable"],
        "target": target,
        "level_from": head["level_from"],
        "level_to": head["level_to"],
        "n_from": int(a[target].notna().sum()),
        "n_to": int(b[target].notna().sum()),
    }
    return paired_test(row, pair, a[target].dropna(), b[target].dropna(), alpha, note, confidence, n_resamples)


def comparisons(
    table: pd.DataFrame,
    specs,
    alpha: float = 0.05,
    n_resamples: int = 2000,
    confidence: float = CONFIDENCE,
    unit: str = "backbone",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(paired tests, level means) of every comparison; ``specs`` "auto" or a list; Holm's
    correction over all of them per target, ``significant`` and ``verdict`` at ``unit``."""
    if unit not in UNITS:
        raise ValueError(f"analysis.unit must be one of {', '.join(UNITS)}, not {unit!r}")
    tests, means = [], []
    table = with_backbones(table)
    for spec in auto_comparisons(table) if specs == "auto" else specs:
        t, m = run_comparison(table, spec, alpha, n_resamples, confidence, unit)
        tests += t
        means += m
    judged = judge(pd.DataFrame(tests), alpha, unit)
    return judged.reindex(columns=PAIRED_TEST_COLUMNS), pd.DataFrame(means).reindex(columns=LEVEL_MEAN_COLUMNS)


def analyze(table: pd.DataFrame, out_dir: str | Path, settings: dict | None = None) -> dict[str, pd.DataFrame]:
    """Write shap_slopes.csv, shap_fit.csv, paired_tests.csv and level_means.csv to out_dir,
    over the rows of trained cells (a ``trained`` column, metrics.health) unless
    ``include_untrained``."""
    from tunnelscope.io import write_csv

    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    table, left_out = study_rows(table, settings["include_untrained"])
    if left_out:
        log.warning(
            "left out %d untrained cell(s) (analysis.include_untrained false): %s", len(left_out), ", ".join(left_out)
        )
    table = check_table(table)
    slopes, fit = shap_slopes(table, settings["shap_slope_normalisation"])
    paired, means = comparisons(
        table,
        settings["comparisons"],
        settings["alpha"],
        settings["bootstrap_resamples"],
        settings["seed_confidence"],
        settings["unit"],
    )
    results = {"shap_slopes": slopes, "shap_fit": fit, "paired_tests": paired, "level_means": means}
    out = Path(out_dir)
    for name, frame in results.items():
        write_csv(frame, out / f"{name}.csv")
    for row in slopes.itertuples():
        if row.note:
            log.info("%s / %s: %s", row.target, row.variable, row.note)
    return results
