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
from tunnelscope.registry import CELL_VARIABLES, DERIVED_VARIABLES, SETTING_CHOICES
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
# The column with_backbones adds; pairs carry it as _backbone_from / _backbone_to.
BACKBONE = "_backbone"
CLIFF_BANDS = ((0.474, "large"), (0.33, "medium"), (0.147, "small"))  # below the last: negligible
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
# Fewer clusters give no cluster-bootstrap interval: 3 backbones have only 10 distinct resamples
# (2 have 3), so a percentile interval over them says little and runs narrow.
MIN_CLUSTERS = 4
# The verdict of a paired test, one rule (``verdict``): the unit's test against the rows' direction.
VERDICTS = ("holds", "direction only", "not supported", "opposite")


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


def _resample_counts(indices: np.ndarray, k: int) -> np.ndarray:
    """(resamples, k) counts of each cluster in resamples of cluster indices (last axis)."""
    flat = indices.reshape(-1, indices.shape[-1])
    offsets = k * np.arange(len(flat))[:, None]
    counts = np.bincount((flat + offsets).ravel(), minlength=k * len(flat)).reshape(len(flat), k)
    return counts.reshape(*indices.shape[:-1], k)


def _cluster_bootstrap(statistic, k: int, n_resamples: int) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of ``statistic(counts)`` over resamples of k clusters
    with replacement (scipy's bootstrap, resampling the cluster indices; counts has the
    resamples on the leading axes and one column per cluster)."""
    ci = stats.bootstrap(
        (np.arange(k),),
        lambda idx, axis=-1: statistic(_resample_counts(idx, k)),
        n_resamples=n_resamples,
        method="percentile",
        vectorized=True,
        random_state=0,
    ).confidence_interval
    return float(ci.low), float(ci.high)


def cluster_bootstrap_interval(values, clusters, n_resamples: int) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean over rows, resampling whole clusters
    (backbones) with all their rows: the OOD sets and seeds of one backbone share its training,
    so its rows are not independent draws. NaN with fewer than ``MIN_CLUSTERS``; the mean itself
    for 0-spread data."""
    values = np.asarray(values, dtype=float)
    codes, uniques = pd.factorize(pd.Series(clusters))
    k = len(uniques)
    if k < MIN_CLUSTERS:
        return float("nan"), float("nan")
    if np.ptp(values) == 0:
        mean = float(values.mean()) if len(values) else float("nan")
        return mean, mean
    sums = np.bincount(codes, weights=values, minlength=k)
    sizes = np.bincount(codes, minlength=k).astype(float)
    return _cluster_bootstrap(lambda w: (w @ sums) / (w @ sizes), k, n_resamples)


def cluster_delta_interval(after, before, clusters, n_resamples: int) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of Cliff's delta(after, before) over paired rows,
    resampling whole clusters (backbone pairs). Each resample's delta is the pooled one over its
    rows, from the cluster-by-cluster sums of sign(after - before) (exact, no row copies). NaN
    with fewer than ``MIN_CLUSTERS`` clusters."""
    after, before = np.asarray(after, dtype=float), np.asarray(before, dtype=float)
    codes, uniques = pd.factorize(pd.Series(clusters))
    k = len(uniques)
    if k < MIN_CLUSTERS:
        return float("nan"), float("nan")
    if np.ptp(np.concatenate([after, before])) == 0:
        delta = cliffs_delta(after, before)
        return delta, delta
    member = np.eye(k)[codes]  # (rows, clusters)
    signs = member.T @ np.sign(after[:, None] - before[None, :]) @ member  # [c, d]: to rows of c vs from rows of d
    sizes = member.sum(axis=0)
    return _cluster_bootstrap(
        lambda w: np.einsum("...i,ij,...j->...", w, signs, w) / ((w @ sizes) ** 2), k, n_resamples
    )


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count). The same as
    statsmodels' multipletests(method="holm"), which is not a dependency: four lines."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    steps = p[order] * (len(order) - np.arange(len(order)))
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(steps))
    return adjusted


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


def backbone_columns(table: pd.DataFrame) -> list[str]:
    """What identifies a backbone (a trained network less its seed) in an analysis table: the cell
    variables but the seed, and the SHAP variables (which identify it where those are absent)."""
    return [c for c in dict.fromkeys((*CELL_VARIABLES, *VARIABLES)) if c != SEED and c in table.columns]


def with_backbones(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with a ``_backbone`` id per row (rows of one backbone share it across OOD sets
    and seeds); without identifying columns every row is its own backbone."""
    if BACKBONE in table.columns:
        return table
    columns = backbone_columns(table)
    if not columns:
        return table.assign(**{BACKBONE: np.arange(len(table))})
    return table.assign(**{BACKBONE: table.groupby(columns, sort=False, dropna=False).ngroup()})


def seed_interval(rows: pd.DataFrame, statistic, confidence: float) -> dict:
    """n_seeds and the t-interval across seeds of ``statistic(rows of one seed)``; NaN bounds
    with fewer than two seeds (or no seed column)."""
    if SEED not in rows.columns or rows.empty:
        return {"n_seeds": 1 if len(rows) else 0, "ci_low": float("nan"), "ci_high": float("nan")}
    _, low, high, _ = t_interval([statistic(group) for _, group in rows.groupby(SEED, sort=True)], confidence)
    return {"n_seeds": int(rows[SEED].nunique()), "ci_low": low, "ci_high": high}


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
        return [{**head, "target": t, "note": f"not estimable: no column {variable}"} for t in TARGETS], []
    table = with_backbones(table)
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
            present = group.dropna(subset=[target])
            values = present[target].to_numpy(dtype=float)
            low, high = bootstrap_interval(values, n_resamples)
            cluster_low, cluster_high = cluster_bootstrap_interval(values, present[BACKBONE], n_resamples)
            seeds = seed_interval(present, lambda g: g[target].mean(), confidence)
            means.append(
                {
                    **head,
                    "level": level,
                    "target": target,
                    "n": len(values),
                    "mean": float(values.mean()) if len(values) else float("nan"),
                    "ci_low": low,
                    "ci_high": high,
                    "n_backbones": int(present[BACKBONE].nunique()),
                    "cluster_ci_low": cluster_low,
                    "cluster_ci_high": cluster_high,
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
            pair = matched[
                [f"{target}_from", f"{target}_to", f"{BACKBONE}_from", f"{BACKBONE}_to"]
                + ([SEED] if SEED in matched.columns else [])
            ].dropna()
            row = {
                **head,
                "target": target,
                "level_from": lo,
                "level_to": hi,
                "n_from": int(a[target].notna().sum()),
                "n_to": int(b[target].notna().sum()),
            }
            tests.append(
                _compare(row, pair, a[target].dropna(), b[target].dropna(), alpha, note, confidence, n_resamples)
            )
    return judge(pd.DataFrame(tests), alpha, unit).to_dict("records"), means


def _compare(
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
    seeds = seed_interval(pair, lambda g: cliffs_delta(g[f"{target}_to"], g[f"{target}_from"]), confidence)
    # delta lies in [-1, 1]; a t-interval over a few seeds can reach past that.
    row.update(
        n_seeds=seeds["n_seeds"], delta_ci_low=max(seeds["ci_low"], -1.0), delta_ci_high=min(seeds["ci_high"], 1.0)
    )
    x, y = after.to_numpy(), before.to_numpy()
    p = 1.0 if np.allclose(x - y, 0) else float(stats.wilcoxon(x, y).pvalue)
    row.update(
        wilcoxon_p=p, pairs_up=int((x > y).sum()), pairs_down=int((x < y).sum()), _row_shift=_signed_rank_sum(x - y)
    )
    clusters = pair[f"{BACKBONE}_from"].astype(str) + " " + pair[f"{BACKBONE}_to"].astype(str)
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
    keys = [f"{BACKBONE}_from", f"{BACKBONE}_to"]
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
    mean_columns = [
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
    judged = judge(pd.DataFrame(tests), alpha, unit)
    return judged.reindex(columns=columns), pd.DataFrame(means).reindex(columns=mean_columns)


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
