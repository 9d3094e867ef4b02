import itertools
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tunnelscope.analysis import comparisons as analysis


def test_cliffs_delta_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 5, size=rng.integers(1, 9)), rng.integers(0, 5, size=rng.integers(1, 9))
        brute = sum(int(x > y) - int(x < y) for x, y in itertools.product(a, b)) / (len(a) * len(b))
        assert analysis.cliffs_delta(a, b) == pytest.approx(brute)


@pytest.mark.parametrize(
    "delta,band",
    [
        (0.1, "negligible"),
        (0.147, "small"),
        (-0.2, "small"),
        (0.33, "medium"),
        (0.4, "medium"),
        (0.474, "large"),
        (-0.9, "large"),
    ],
)
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
                "ood_set": ood,
                "family": "cnn",
                "stem": 3,
                "spatial_reduction": 0.5,
                "augmentation": "rrc_flip" if aug else "none",
                "resolution": res,
                "id_classes": 100,
                "gamma": 0.5,
                "depth": depth,
                "ood_retained": retained,
                "pearson": 0.5 + 0.1 * aug + rng.normal(0, 0.01),
                "alignment": 0.2 + 0.05 * code_res,
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


def test_automatic_comparisons_pair_every_level_pair_on_the_other_variables():
    tests, _ = analysis.comparisons(analysis.check_table(planted_table()), "auto")
    aug = tests[(tests.variable == "augmentation") & (tests.target == "ood_retained")].iloc[0]
    assert aug.n_pairs == 3 * 2 * 4  # resolution x depth x OOD set, one backbone per pair
    assert aug.mean_to > aug.mean_from and aug.significant and aug.magnitude == "large"
    depth = tests[(tests.variable == "depth") & (tests.target == "ood_retained")].iloc[0]
    assert depth.cliffs_delta < 0 and depth.n_pairs == 2 * 3 * 4
    res = tests[(tests.variable == "resolution") & (tests.target == "ood_retained")]
    assert res[["level_from", "level_to"]].values.tolist() == [[32, 64], [32, 128], [64, 128]]  # not only neighbours
    assert set(tests.variable) == {"augmentation", "resolution", "depth"}  # single-level variables are not compared


def test_declared_comparison_selects_matches_and_pairs_in_order():
    rng = np.random.default_rng(1)
    rows = []
    # Two architectures per stem level, at two resolutions and three OOD sets.
    for arch, stem, depth in [("a11", 3, 11), ("a17", 3, 17), ("b18", 7, 18), ("b34", 7, 34)]:
        for res, ood in itertools.product([32, 224], ["x", "y", "z"]):
            rows.append(
                {
                    "arch": arch,
                    "stem": stem,
                    "depth": depth,
                    "resolution": res,
                    "ood_set": ood,
                    "ood_retained": 90 - stem + rng.normal(),
                    "pearson": 0.5,
                    "alignment": 0.1,
                }
            )
    table = pd.DataFrame(rows)
    spec = {
        "name": "stem 32",
        "variable": "stem",
        "where": {"resolution": [32]},
        "match": ["resolution", "ood_set"],
        "pair_order": "depth",
    }
    tests, means = analysis.run_comparison(table, spec, 0.05, 200)
    row = next(t for t in tests if t["target"] == "ood_retained")
    assert row["n_pairs"] == 2 * 3 and row["n_from"] == row["n_to"] == 6  # a11-b18 and a17-b34 per OOD set
    assert row["abs_delta"] == 1.0 and row["mean_to"] < row["mean_from"]
    assert [m["level"] for m in means if m["target"] == "pearson"] == [3, 7]
    assert row["note"].startswith("several backbones per level share the matched values: paired in order of depth")
    pairs, shared = analysis.pair_rows(
        table[(table.stem == 3) & (table.resolution == 32)],
        table[(table.stem == 7) & (table.resolution == 32)],
        ["ood_set"],
        "depth",
    )
    assert shared and sorted(zip(pairs.arch_from, pairs.arch_to)) == [("a11", "b18")] * 3 + [("a17", "b34")] * 3
    # Means and delta follow the pairs: a level's unpaired rows (here one more OOD set) stay out.
    extra = pd.concat([table, table[table.stem == 3].assign(ood_set="w", ood_retained=0.0)])
    wide = next(
        t for t in analysis.run_comparison(extra, {**spec, "where": {}}, 0.05, 200)[0] if t["target"] == "ood_retained"
    )
    assert wide["n_from"] == 24 and wide["n_pairs"] == 12 and wide["mean_from"] > 85
    with pytest.raises(analysis.TableError, match="'seed'"):
        analysis.run_comparison(table, {**spec, "match": ["seed"]}, 0.05, 200)


def test_level_means_with_bootstrap_intervals():
    _, means = analysis.comparisons(analysis.check_table(planted_table()), "auto")
    row = means[
        (means.variable == "augmentation") & (means.level == "rrc_flip") & (means.target == "ood_retained")
    ].iloc[0]
    assert row.n == 24 and row.ci_low < row["mean"] < row.ci_high


def test_malformed_tables_name_the_column():
    table = planted_table().drop(columns=["gamma"])
    with pytest.raises(analysis.TableError, match="'gamma' is missing"):
        analysis.check_table(table)
    table = planted_table().assign(resolution="big")
    with pytest.raises(analysis.TableError, match="'resolution' must be numeric"):
        analysis.check_table(table)
    with pytest.raises(analysis.TableError, match="'family' must hold cnn, vit, mlp, found rnn"):
        analysis.check_table(planted_table().assign(family="rnn"))


def test_analyze_cli_writes_the_four_tables(tmp_path):
    table = planted_table().assign(extra="carried")
    table.to_csv(tmp_path / "grid.csv", index=False)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunnelscope.cli",
            "analyze",
            str(tmp_path / "grid.csv"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert pd.read_csv(tmp_path / "out/shap_fit.csv").columns.tolist()[:2] == ["target", "r2"]
    for name in ("shap_slopes", "paired_tests", "level_means"):
        assert len(pd.read_csv(tmp_path / "out" / f"{name}.csv"))
    bad = subprocess.run(
        [sys.executable, "-m", "tunnelscope.cli", "analyze", str(tmp_path / "missing.csv"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "missing.csv" in bad.stderr
