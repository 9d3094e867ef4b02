import itertools
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tunnelscope import analysis


def test_cliffs_delta_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 5, size=rng.integers(1, 9)), rng.integers(0, 5, size=rng.integers(1, 9))
        brute = sum(int(x > y) - int(x < y) for x, y in itertools.product(a, b)) / (len(a) * len(b))
        assert analysis.cliffs_delta(a, b) == pytest.approx(brute)


@pytest.mark.parametrize("delta,band", [(0.1, "negligible"), (0.147, "small"), (-0.2, "small"), (0.33, "medium"), (0.4, "medium"), (0.474, "large"), (-0.9, "large")])
def test_cliffs_magnitude_bands(delta, band):
    assert analysis.cliffs_magnitude(delta) == band


def planted_table(seed=0):
    """A grid with planted effects on % retained: augmentation +, resolution +, depth -."""
    rng = np.random.default_rng(seed)
    rows = []
    for aug, res, depth, ood in itertools.product([0, 1], [32, 64, 128], [11, 17], ["a", "b", "c", "d"]):
        code_res = [32, 64, 128].index(res) / 2
        retained = 70 + 15 * aug + 8 * code_res - 12 * (depth == 17) + rng.normal(0, 1)
        rows.append(
            {
                "ood_set": ood, "family": "cnn", "stem": 3, "spatial_reduction": 4, "augmentation": "rrc_flip" if aug else "none",
                "resolution": res, "id_classes": 100, "gamma": 0.5, "depth": depth,
                "ood_retained": retained, "pearson": 0.5 + 0.1 * aug + rng.normal(0, 0.01), "alignment": 0.2 + 0.05 * code_res,
            }
        )
    return pd.DataFrame(rows)


def test_shap_slopes_recover_planted_effects():
    slopes, fit = analysis.shap_slopes(analysis.check_table(planted_table()))
    r = slopes[slopes.target == "ood_retained"].set_index("variable").slope
    assert r["augmentation"] > 0 and r["resolution"] > 0 and r["depth"] < 0
    assert abs(r["augmentation"]) > abs(r["depth"]) > abs(r["resolution"])
    assert np.isnan(r["stem"]) and np.isnan(r["family"]) and np.isnan(r["gamma"])  # single level
    notes = slopes.set_index(["target", "variable"]).note
    assert notes["ood_retained", "stem"] == "not estimable: single level"
    assert fit.set_index("target").r2["ood_retained"] > 0.9


def test_paired_tests_match_on_other_variables():
    tests = analysis.paired_tests(analysis.check_table(planted_table()))
    aug = tests[(tests.variable == "augmentation") & (tests.target == "ood_retained")].iloc[0]
    assert aug.n_pairs == 3 * 2 * 4  # resolution x depth x OOD set
    assert aug.mean_to > aug.mean_from and aug.significant and aug.magnitude == "large"
    depth = tests[(tests.variable == "depth") & (tests.target == "ood_retained")].iloc[0]
    assert depth.cliffs_delta < 0
    res = tests[(tests.variable == "resolution") & (tests.target == "ood_retained")]
    assert res[["level_from", "level_to"]].values.tolist() == [[32, 64], [64, 128]]
    single = tests[tests.variable == "stem"]
    assert set(single.note) == {"not estimable: single level"}


def test_level_means_with_bootstrap_intervals():
    means = analysis.level_means(analysis.check_table(planted_table()))
    row = means[(means.variable == "augmentation") & (means.level == 1) & (means.target == "ood_retained")].iloc[0]
    assert row.n == 24 and row.ci_low < row["mean"] < row.ci_high


def test_malformed_tables_name_the_column():
    table = planted_table().drop(columns=["gamma"])
    with pytest.raises(analysis.TableError, match="'gamma' is missing"):
        analysis.check_table(table)
    table = planted_table().assign(resolution="big")
    with pytest.raises(analysis.TableError, match="'resolution' must be numeric"):
        analysis.check_table(table)
    with pytest.raises(analysis.TableError, match="'family' must hold cnn or vit"):
        analysis.check_table(planted_table().assign(family="mlp"))


def test_analyze_cli_writes_the_four_tables(tmp_path):
    table = planted_table().assign(extra="carried")
    table.to_csv(tmp_path / "grid.csv", index=False)
    result = subprocess.run([sys.executable, "-m", "tunnelscope.cli", "analyze", str(tmp_path / "grid.csv"), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert pd.read_csv(tmp_path / "out/shap_fit.csv").columns.tolist()[:2] == ["target", "r2"]
    for name in ("shap_slopes", "paired_tests", "level_means"):
        assert len(pd.read_csv(tmp_path / "out" / f"{name}.csv"))
    bad = subprocess.run([sys.executable, "-m", "tunnelscope.cli", "analyze", str(tmp_path / "missing.csv"), "--out", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 1 and "missing.csv" in bad.stderr
