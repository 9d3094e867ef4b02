"""SHAP slopes (Harun et al. 2024, Sec. 3.3): how each of the eight variables moves each target."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunnelscope.analysis.table import FAMILIES, VARIABLES, encode, target_values
from tunnelscope.registry import ANALYSIS_TARGETS
from tunnelscope.study.config import SHAP_MIN_ROWS


def shap_slopes(table: pd.DataFrame, normalisation: str = "none") -> tuple[pd.DataFrame, pd.DataFrame]:
    """SHAP slope per (target, variable) and in-sample R^2 per target.

    ``normalisation`` "l1" divides each target's slopes by the sum of their absolute values
    (the paper's text); "none" keeps them raw (its released code and figures)."""
    import shap
    from sklearn.ensemble import GradientBoostingRegressor

    slopes, fits = [], []
    for target in ANALYSIS_TARGETS:
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
