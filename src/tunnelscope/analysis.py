"""Cross-grid analysis (PROTOCOL.md, "Analysis across backbones").

Input: one row per (backbone, OOD set) with the targets ``ood_retained`` (percent), ``pearson``,
``alignment`` and the variables below. Output: SHAP slopes with in-sample R^2, paired
comparisons per variable (Wilcoxon signed-rank, Cliff's delta), and per-level means with
bootstrap 95% intervals.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

log = logging.getLogger("tunnelscope.analysis")

TARGETS = ("ood_retained", "pearson", "alignment")
VARIABLES = ("stem", "spatial_reduction", "family", "augmentation", "resolution", "id_classes", "gamma", "depth")
NUMERIC = ("stem", "spatial_reduction", "resolution", "id_classes", "gamma", "depth")
# Held fixed when pairing backbones that differ in one variable; gamma is derived from the
# architecture and the data size, so it is reported by SHAP but never matched or paired.
PAIRED = ("stem", "spatial_reduction", "family", "augmentation", "resolution", "id_classes", "depth")
CLIFF_BANDS = ((0.474, "large"), (0.33, "medium"), (0.147, "small"), (0.0, "negligible"))


class TableError(ValueError):
    """A malformed analysis table, naming the offending column."""


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return check_table(table)


def check_table(table: pd.DataFrame) -> pd.DataFrame:
    for column in TARGETS + VARIABLES:
        if column not in table.columns:
            raise TableError(f"column {column!r} is missing; needed: {', '.join(TARGETS + VARIABLES)}")
    for column in TARGETS + NUMERIC:
        if not pd.api.types.is_numeric_dtype(table[column]):
            raise TableError(f"column {column!r} must be numeric, found {table[column].dtype}")
    bad = sorted(set(table.family.astype(str)) - {"cnn", "vit"})
    if bad:
        raise TableError(f"column 'family' must hold cnn or vit, found {', '.join(bad)}")
    table = table.copy()
    table["augmentation"] = augmentation_code(table.augmentation)
    return table


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
    """Model features: ordinal codes, and CNN-vs-ViT one-hot."""
    features = pd.DataFrame({v: ordinal(table[v]) for v in VARIABLES if v != "family"}, index=table.index)
    features["family_cnn"] = (table.family == "cnn").astype(float)
    features["family_vit"] = (table.family == "vit").astype(float)
    return features


def target_values(table: pd.DataFrame, target: str) -> pd.Series:
    return table[target] / 100.0 if target == "ood_retained" else table[target]


def shap_slopes(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """SHAP slope per (target, variable) and in-sample R^2 per target."""
    import shap
    from sklearn.ensemble import GradientBoostingRegressor

    slopes, fits = [], []
    for target in TARGETS:
        y = target_values(table, target)
        rows = table[y.notna()]
        y = y[y.notna()]
        if len(rows) < 3:
            fits.append({"target": target, "r2": float("nan"), "n": len(rows)})
            slopes += [{"target": target, "variable": v, "slope": float("nan"), "note": "not estimable: fewer than 3 rows"} for v in VARIABLES]
            continue
        x = encode(rows)
        model = GradientBoostingRegressor(loss="huber", random_state=0).fit(x, y)
        fits.append({"target": target, "r2": float(model.score(x, y)), "n": len(rows)})
        values = pd.DataFrame(shap.TreeExplainer(model).shap_values(x), columns=x.columns, index=x.index)
        values["family"] = values.pop("family_cnn") + values.pop("family_vit")
        codes = x.drop(columns=["family_cnn", "family_vit"]).assign(family=x.family_vit)
        for variable in VARIABLES:
            slopes.append({"target": target, "variable": variable, **_slope(codes[variable], values[variable])})
    return pd.DataFrame(slopes), pd.DataFrame(fits)


def _slope(code: pd.Series, shap_values: pd.Series) -> dict:
    if code.max() == code.min():
        return {"slope": float("nan"), "note": "not estimable: single level"}
    x = code / code.max()
    return {"slope": float(np.polyfit(x, shap_values, 1)[0]), "note": ""}


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


def paired_tests(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """For each variable and each pair of consecutive levels: rows matched on every other
    paired variable, the OOD set and (if present) the seed; Wilcoxon and Cliff's delta."""
    rows = []
    extra_keys = [k for k in ("ood_set", "seed") if k in table.columns]
    for variable in PAIRED:
        levels = sorted(table[variable].unique())
        if len(levels) < 2:
            rows += [{"variable": variable, "target": t, "note": "not estimable: single level"} for t in TARGETS]
            continue
        keys = [v for v in PAIRED if v != variable] + extra_keys
        for lo, hi in zip(levels, levels[1:]):
            a = table[table[variable] == lo].groupby(keys)[list(TARGETS)].mean()
            b = table[table[variable] == hi].groupby(keys)[list(TARGETS)].mean()
            both = a.merge(b, left_index=True, right_index=True, suffixes=("_lo", "_hi"))
            for target in TARGETS:
                pair = both[[f"{target}_lo", f"{target}_hi"]].dropna()
                rows.append(_compare(variable, target, lo, hi, pair[f"{target}_lo"].to_numpy(), pair[f"{target}_hi"].to_numpy(), alpha))
    return pd.DataFrame(rows)


def _compare(variable, target, lo, hi, before, after, alpha) -> dict:
    row = {"variable": variable, "target": target, "level_from": lo, "level_to": hi, "n_pairs": len(before)}
    if len(before) == 0:
        return {**row, "note": "not estimable: no matched pairs"}
    diff = after - before
    p = 1.0 if np.allclose(diff, 0) else float(stats.wilcoxon(after, before).pvalue)
    delta = cliffs_delta(after, before)
    return {
        **row,
        "mean_from": float(before.mean()),
        "mean_to": float(after.mean()),
        "wilcoxon_p": p,
        "significant": bool(p < alpha),
        "cliffs_delta": delta,
        "magnitude": cliffs_magnitude(delta),
        "note": "",
    }


def level_means(table: pd.DataFrame, n_resamples: int = 2000) -> pd.DataFrame:
    """Mean of each target per level of each variable, with a percentile bootstrap 95% CI."""
    rows = []
    for variable in VARIABLES:
        for level, group in table.groupby(variable, sort=True):
            for target in TARGETS:
                values = group[target].dropna().to_numpy(dtype=float)
                low = high = float("nan")
                if len(values) > 1 and np.ptp(values) > 0:
                    ci = stats.bootstrap((values,), np.mean, n_resamples=n_resamples, method="percentile", random_state=0).confidence_interval
                    low, high = float(ci.low), float(ci.high)
                elif len(values):
                    low = high = float(values.mean())
                rows.append({"variable": variable, "level": level, "target": target, "n": len(values), "mean": float(values.mean()) if len(values) else float("nan"), "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def analyze(table: pd.DataFrame, out_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Write shap_slopes.csv, shap_fit.csv, paired_tests.csv and level_means.csv to out_dir."""
    from .io import atomic_path

    table = check_table(table)
    slopes, fit = shap_slopes(table)
    results = {"shap_slopes": slopes, "shap_fit": fit, "paired_tests": paired_tests(table), "level_means": level_means(table)}
    out = Path(out_dir)
    for name, frame in results.items():
        with atomic_path(out / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False)
    for row in slopes.itertuples():
        if row.note:
            log.info("%s / %s: %s", row.target, row.variable, row.note)
    return results
