"""Cross-grid analysis (Harun et al. 2024, Sec. 3.3 and App. C; docs/protocol.md).

Input: one row per (backbone, OOD set) with the targets ``ood_retained`` (percent), ``pearson``,
``alignment``, the eight SHAP variables and, for paired comparisons, whatever identifies a row:
the cell variables (arch, id_dataset, resolution, augmentation, seed), ``ood_set`` and
``ood_index``. Output: SHAP slopes with in-sample R^2, paired comparisons (over matched pairs,
one backbone of each level with all else equal: means, Cliff's delta and the Wilcoxon
signed-rank test) and per-level means with bootstrap 95% intervals, for the comparisons of
``analysis.comparisons``. Pairs always match on the seed; with several seeds, level means and
Cliff's delta also get a t-interval across seeds (``seeds.t_interval``).
"""

from __future__ import annotations

import itertools
import logging
import numbers
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from tunnelscope import io
from tunnelscope.metrics.health import study_rows
from tunnelscope.metrics.seeds import CONFIDENCE, SEED, t_interval
from tunnelscope.registry import CELL_VARIABLES, DERIVED_VARIABLES
from tunnelscope.study.config import SHAP_MIN_ROWS

log = logging.getLogger("tunnelscope.analysis")

TARGETS = ("ood_retained", "pearson", "alignment")
# The SHAP model's eight features, as in the paper.
VARIABLES = ("stem", "spatial_reduction", "family", "augmentation", "resolution", "id_classes", "gamma", "depth")
NUMERIC = ("stem", "spatial_reduction", "resolution", "id_classes", "gamma", "depth")
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
# Levels of ``family``, in the order of its SHAP code: the paper's CNN-vs-ViT, and MLPs
# (Masarczyk et al.'s), whose one-hot column exists only in tables that have them, so the paper's
# own fit is unchanged.
FAMILIES = ("cnn", "vit", "mlp")
CLIFF_BANDS = ((0.474, "large"), (0.33, "medium"), (0.147, "small"))  # below the last: negligible
DEFAULT_SETTINGS = {
    "comparisons": "auto",
    "shap_slope_normalisation": "none",
    "alpha": 0.05,
    "bootstrap_resamples": 2000,
    "seed_confidence": CONFIDENCE,
    "include_untrained": False,
}


class TableError(ValueError):
    """A malformed analysis table, naming the offending column."""


def read_table(path: str | Path) -> pd.DataFrame:
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
    for column in TARGETS + VARIABLES:
        if column not in table.columns:
            raise TableError(f"column {column!r} is missing; needed: {', '.join(TARGETS + VARIABLES)}")
    for column in TARGETS + NUMERIC:
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


# ---------------------------------------------------------------- SHAP slopes


def shap_slopes(table: pd.DataFrame, normalisation: str = "none") -> tuple[pd.DataFrame, pd.DataFrame]:
    """SHAP slope per (target, variable) and in-sample R^2 per target.

    ``normalisation`` "l1" divides each target's slopes by the sum of their absolute values
    (the paper's text); "none" keeps them raw (its released code and figures)."""
    import shap
    from sklearn.ensemble import GradientBoostingRegressor

    slopes, fits = [], []
    for target in TARGETS:
        y = target_values(table, target)
        rows = table[y.notna()]
        y = y[y.notna()]
        if len(rows) < SHAP_MIN_ROWS:
            fits.append({"target": target, "r2": float("nan"), "n": len(rows)})
            slopes += [
                {
                    "target": target,
                    "variable": v,
                    "slope": float("nan"),
                    "note": f"not estimable: fewer than {SHAP_MIN_ROWS} rows",
                }
                for v in VARIABLES
            ]
            continue
        x = encode(rows)
        model = GradientBoostingRegressor(loss="huber", random_state=0).fit(x, y)
        fits.append({"target": target, "r2": float(model.score(x, y)), "n": len(rows)})
        values = pd.DataFrame(shap.TreeExplainer(model).shap_values(x), columns=x.columns, index=x.index)
        one_hot = [c for c in x.columns if c.startswith("family_")]
        values["family"] = values[one_hot].sum(axis=1)
        # Code of the slope: the family's position in FAMILIES (the ViT indicator without MLPs).
        codes = x.drop(columns=one_hot).assign(family=rows.family.map(FAMILIES.index).astype(float))
        per_target = [{"target": target, "variable": v, **_slope(codes[v], values[v])} for v in VARIABLES]
        if normalisation == "l1":
            total = sum(abs(r["slope"]) for r in per_target if not np.isnan(r["slope"]))
            for r in per_target:
                r["slope"] = r["slope"] / total if total > 0 else float("nan")
        slopes += per_target
    return pd.DataFrame(slopes), pd.DataFrame(fits)


def _slope(code: pd.Series, shap_values: pd.Series) -> dict:
    if code.max() == code.min():
        return {"slope": float("nan"), "note": "not estimable: single level"}
    x = code / code.max()
    return {"slope": float(np.polyfit(x, shap_values, 1)[0]), "note": ""}


# ---------------------------------------------------------------- effect sizes


def cliffs_delta(high, low) -> float:
    """(#(h > l) - #(h < l)) / (n_h n_l) over all cross pairs."""
    high, low = np.asarray(high, dtype=float), np.asarray(low, dtype=float)
    if len(high) == 0 or len(low) == 0:
        return float("nan")
    # Rank-based count in O((n + m) log m) instead of the n x m comparison matrix.
    low_sorted = np.sort(low)
    below = np.searchsorted(low_sorted, high, side="left")
    above = len(low) - np.searchsorted(low_sorted, high, side="right")
    return float((below.sum() - above.sum()) / (len(high) * len(low)))


def cliffs_magnitude(delta: float) -> str:
    if np.isnan(delta):
        return ""
    for lower, name in CLIFF_BANDS:
        if abs(delta) >= lower:
            return name
    return "negligible"


def bootstrap_interval(values: np.ndarray, n_resamples: int) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean (the mean itself for 0-spread data)."""
    if len(values) > 1 and np.ptp(values) > 0:
        ci = stats.bootstrap(
            (values,), np.mean, n_resamples=n_resamples, method="percentile", random_state=0
        ).confidence_interval
        return float(ci.low), float(ci.high)
    mean = float(values.mean()) if len(values) else float("nan")
    return mean, mean


# ---------------------------------------------------------------- comparisons


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


def seed_interval(rows: pd.DataFrame, statistic, confidence: float) -> dict:
    """n_seeds and the t-interval across seeds of ``statistic(rows of one seed)``; NaN bounds
    with fewer than two seeds (or no seed column)."""
    if SEED not in rows.columns or rows.empty:
        return {"n_seeds": 1 if len(rows) else 0, "ci_low": float("nan"), "ci_high": float("nan")}
    _, low, high, _ = t_interval([statistic(group) for _, group in rows.groupby(SEED, sort=True)], confidence)
    return {"n_seeds": int(rows[SEED].nunique()), "ci_low": low, "ci_high": high}


def run_comparison(
    table: pd.DataFrame, spec: dict, alpha: float, n_resamples: int, confidence: float = CONFIDENCE
) -> tuple[list[dict], list[dict]]:
    """(paired test rows, level mean rows) of one comparison."""
    name, variable = spec["name"], spec["variable"]
    head = {"comparison": name, "variable": variable}
    if variable not in table.columns:
        return [{**head, "target": t, "note": f"not estimable: no column {variable}"} for t in TARGETS], []
    rows = select(table, spec.get("where", {}))
    present = present_levels(rows[variable])
    if spec.get("levels"):
        levels = [next((p for p in present if level_mask(pd.Series([p]), lv).iloc[0]), lv) for lv in spec["levels"]]
    else:
        levels = present
    means = []
    for level in levels:
        group = rows[level_mask(rows[variable], level)]
        for target in TARGETS:
            values = group[target].dropna().to_numpy(dtype=float)
            low, high = bootstrap_interval(values, n_resamples)
            seeds = seed_interval(group.dropna(subset=[target]), lambda g: g[target].mean(), confidence)
            means.append(
                {
                    **head,
                    "level": level,
                    "target": target,
                    "n": len(values),
                    "mean": float(values.mean()) if len(values) else float("nan"),
                    "ci_low": low,
                    "ci_high": high,
                    "n_seeds": seeds["n_seeds"],
                    "seed_ci_low": seeds["ci_low"],
                    "seed_ci_high": seeds["ci_high"],
                }
            )
    if len(levels) < 2 and not spec.get("pairs"):
        return [{**head, "target": t, "note": "not estimable: single level"} for t in TARGETS], means
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
        for target in TARGETS:
            pair = matched[[f"{target}_from", f"{target}_to"] + ([SEED] if SEED in matched.columns else [])].dropna()
            row = {
                **head,
                "target": target,
                "level_from": lo,
                "level_to": hi,
                "n_from": int(a[target].notna().sum()),
                "n_to": int(b[target].notna().sum()),
            }
            tests.append(_compare(row, pair, a[target].dropna(), b[target].dropna(), alpha, note, confidence))
    return tests, means


def _compare(
    row: dict,
    pair: pd.DataFrame,
    before: pd.Series,
    after: pd.Series,
    alpha: float,
    note: str,
    confidence: float = CONFIDENCE,
) -> dict:
    """Means, Cliff's delta and the Wilcoxon test over the matched pairs, so all three compare
    like with like (and the t-interval across seeds of the delta within each seed's pairs);
    without pairs, means and delta over all rows of the two levels, no test."""
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
    seeds = seed_interval(pair, lambda g: cliffs_delta(g[f"{target}_to"], g[f"{target}_from"]), confidence)
    # delta lies in [-1, 1]; a t-interval over a few seeds can reach past that.
    row.update(
        n_seeds=seeds["n_seeds"], delta_ci_low=max(seeds["ci_low"], -1.0), delta_ci_high=min(seeds["ci_high"], 1.0)
    )
    x, y = after.to_numpy(), before.to_numpy()
    p = 1.0 if np.allclose(x - y, 0) else float(stats.wilcoxon(x, y).pvalue)
    return {**row, "wilcoxon_p": p, "significant": bool(p < alpha), "note": note}


def comparisons(
    table: pd.DataFrame, specs, alpha: float = 0.05, n_resamples: int = 2000, confidence: float = CONFIDENCE
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(paired tests, level means) of every comparison; ``specs`` "auto" or a list."""
    tests, means = [], []
    for spec in auto_comparisons(table) if specs == "auto" else specs:
        t, m = run_comparison(table, spec, alpha, n_resamples, confidence)
        tests += t
        means += m
    columns = [
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
        "note",
    ]
    mean_columns = [
        "comparison",
        "variable",
        "level",
        "target",
        "n",
        "mean",
        "ci_low",
        "ci_high",
        "n_seeds",
        "seed_ci_low",
        "seed_ci_high",
    ]
    return pd.DataFrame(tests).reindex(columns=columns), pd.DataFrame(means).reindex(columns=mean_columns)


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
        table, settings["comparisons"], settings["alpha"], settings["bootstrap_resamples"], settings["seed_confidence"]
    )
    results = {"shap_slopes": slopes, "shap_fit": fit, "paired_tests": paired, "level_means": means}
    out = Path(out_dir)
    for name, frame in results.items():
        write_csv(frame, out / f"{name}.csv")
    for row in slopes.itertuples():
        if row.note:
            log.info("%s / %s: %s", row.target, row.variable, row.note)
    return results
