import itertools
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tunnelscope.analysis import comparisons as analysis
from tunnelscope.analysis import effect_sizes, paired_tests
from tunnelscope.analysis import table as analysis_table
from tunnelscope.analysis.shap_slopes import shap_slopes


def test_cliffs_delta_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 5, size=rng.integers(1, 9)), rng.integers(0, 5, size=rng.integers(1, 9))
        brute = sum(int(x > y) - int(x < y) for x, y in itertools.product(a, b)) / (len(a) * len(b))
        assert effect_sizes.cliffs_delta(a, b) == pytest.approx(brute)


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
    assert effect_sizes.cliffs_magnitude(delta) == band


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
    slopes, fit = shap_slopes(analysis_table.check_table(planted_table()))
    r = slopes[slopes.target == "ood_retained"].set_index("variable").slope
    assert r["augmentation"] > 0 and r["resolution"] > 0 and r["depth"] < 0
    assert abs(r["augmentation"]) > abs(r["depth"]) > abs(r["resolution"])
    assert np.isnan(r["stem"]) and np.isnan(r["family"]) and np.isnan(r["gamma"])  # single level
    notes = slopes.set_index(["target", "variable"]).note
    assert notes["ood_retained", "stem"] == "not estimable: single level"
    assert fit.set_index("target").r2["ood_retained"] > 0.9


def test_automatic_comparisons_pair_every_level_pair_on_the_other_variables():
    tests, _ = analysis.comparisons(analysis_table.check_table(planted_table()), "auto", unit="row")
    aug = tests[(tests.variable == "augmentation") & (tests.target == "ood_retained")].iloc[0]
    assert aug.n_pairs == 3 * 2 * 4  # resolution x depth x OOD set, one backbone per pair
    assert aug.mean_to > aug.mean_from and aug.significant and aug.magnitude == "large"
    assert aug.unit == "row" and aug.verdict == "holds"
    # The same rows as 6 backbone pairs, all up: exact p 2/2^6, times 5 tests of % retained by Holm.
    assert aug.n_backbone_pairs == 6 and aug.backbone_up == 6 and aug.backbone_p == pytest.approx(0.03125)
    assert aug.backbone_p_holm == pytest.approx(5 * 0.03125)
    tests, _ = analysis.comparisons(analysis_table.check_table(planted_table()), "auto")
    aug = tests[(tests.variable == "augmentation") & (tests.target == "ood_retained")].iloc[0]
    assert aug.unit == "backbone" and not aug.significant and aug.verdict == "direction only"
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
    _, means = analysis.comparisons(analysis_table.check_table(planted_table()), "auto")
    row = means[
        (means.variable == "augmentation") & (means.level == "rrc_flip") & (means.target == "ood_retained")
    ].iloc[0]
    assert row.n == 24 and row.ci_low < row["mean"] < row.ci_high


def test_malformed_tables_name_the_column():
    table = planted_table().drop(columns=["gamma"])
    with pytest.raises(analysis.TableError, match="'gamma' is missing"):
        analysis_table.check_table(table)
    table = planted_table().assign(resolution="big")
    with pytest.raises(analysis.TableError, match="'resolution' must be numeric"):
        analysis_table.check_table(table)
    with pytest.raises(analysis.TableError, match="'family' must hold cnn, vit, mlp, found rnn"):
        analysis_table.check_table(planted_table().assign(family="rnn"))


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


def test_holm_matches_the_step_down_by_hand():
    # sorted 0.01, 0.02, 0.03, 0.2 -> 4 x 0.01, 3 x 0.02, max(0.06, 2 x 0.03), max(0.06, 0.2); NaN left out
    adjusted = effect_sizes.holm([0.03, 0.01, np.nan, 0.2, 0.02])
    np.testing.assert_allclose(adjusted, [0.06, 0.04, np.nan, 0.2, 0.06])
    assert effect_sizes.holm([0.5, 0.9]).tolist() == [1.0, 1.0]


def test_cluster_bootstrap_of_balanced_rows_is_the_bootstrap_of_backbone_means():
    """Whole backbones resampled: rows of 6 backbones x 8 OOD sets give exactly the interval of
    the 6 backbone means (same resampled indices), far wider than treating the 48 rows as
    independent; fewer than MIN_CLUSTERS backbones give none."""
    rng = np.random.default_rng(1)
    backbone_means = rng.normal(70, 10, size=6)
    values = np.repeat(backbone_means, 8) + rng.normal(0, 1, size=48) * np.tile([1, -1], 24)
    clusters = np.repeat(np.arange(6), 8)
    exact = effect_sizes.bootstrap_interval(values.reshape(6, 8).mean(axis=1), 500)
    np.testing.assert_allclose(effect_sizes.cluster_bootstrap_interval(values, clusters, 500), exact)
    row_low, row_high = effect_sizes.bootstrap_interval(values, 500)
    assert exact[1] - exact[0] > 2 * (row_high - row_low)
    assert np.isnan(effect_sizes.cluster_bootstrap_interval(values[:24], clusters[:24], 500)).all()


def test_cluster_delta_interval_pools_the_resampled_pairs():
    rng = np.random.default_rng(2)
    after, before = rng.normal(1, 1, 40), rng.normal(0, 1, 40)
    clusters = np.repeat(np.arange(5), 8)
    low, high = effect_sizes.cluster_delta_interval(after, before, clusters, 500)
    assert low < effect_sizes.cliffs_delta(after, before) < high
    # Resampled cluster indices become per-cluster counts (the data itself: each cluster once).
    counts = effect_sizes._resample_counts(np.arange(5)[None, :], 5)
    assert counts.tolist() == [[1, 1, 1, 1, 1]]


def one_pair_effect_table() -> pd.DataFrame:
    """Augmentation none -> rrc_flip in 4 backbone pairs over 8 OOD sets; only arch "a" moves
    (+10 on every OOD set). The other pairs move by +0.5 / -0.4 (b, d) or -0.5 / +0.4 (c) on
    alternate OOD sets: backbone means +0.05, -0.05, +0.05, rows mostly smaller than a's."""
    rows = []
    wobble = {"a": (10.0, 10.0), "b": (0.5, -0.4), "c": (-0.5, 0.4), "d": (0.5, -0.4)}
    for depth, arch in enumerate("abcd"):
        for k in range(8):
            base = 60.0 + 3 * k + depth
            for aug in ("none", "rrc_flip"):
                shift = wobble[arch][k % 2] if aug == "rrc_flip" else 0.0
                rows.append(
                    {
                        "arch": arch,
                        "augmentation": aug,
                        "ood_set": f"ood{k}",
                        "family": "cnn",
                        "stem": 3,
                        "spatial_reduction": 0.5,
                        "resolution": 32,
                        "id_classes": 10,
                        "gamma": 1.0,
                        "depth": 11 + depth,
                        "ood_retained": base + shift,
                        "pearson": 0.5,
                        "alignment": 0.1,
                    }
                )
    return pd.DataFrame(rows)


def test_an_effect_in_one_backbone_pair_is_significant_by_rows_only():
    table = analysis_table.check_table(one_pair_effect_table())
    spec = [{"name": "augmentation", "variable": "augmentation"}]
    tests, means = analysis.comparisons(table, spec)
    row = tests[tests.target == "ood_retained"].iloc[0]
    assert row.n_pairs == 32 and row.wilcoxon_p < 0.02  # 32 "independent" rows
    assert row.n_backbone_pairs == 4 and row.backbone_up == 3 and row.backbone_p > 0.3
    assert not row.significant and row.verdict == "direction only"
    assert "4 backbone pairs: a two-sided Wilcoxon p cannot fall below 0.125" in row.note
    by_rows = analysis.comparisons(table, spec, unit="row")[0].query("target == 'ood_retained'").iloc[0]
    assert by_rows.significant and by_rows.verdict == "holds"
    level = means[(means.target == "ood_retained") & (means.level == "rrc_flip")].iloc[0]
    assert level.n_backbones == 4 and level.cluster_ci_high - level.cluster_ci_low > 0


def test_verdict_rule_covers_its_four_outcomes():
    def row(**kw):
        base = dict(
            cliffs_delta=0.4,
            mean_from=1.0,
            mean_to=2.0,
            backbone_p_holm=0.01,
            wilcoxon_p=0.01,
            _backbone_shift=5.0,
            _row_shift=5.0,
            backbone_up=5,
            backbone_down=1,
            pairs_up=5,
            pairs_down=1,
            n_backbone_pairs=6,
            n_pairs=6,
        )
        return pd.Series({**base, **kw})

    assert paired_tests._verdict(row(), True, 0.05) == "holds"
    assert paired_tests._verdict(row(_backbone_shift=-5.0), True, 0.05) == "opposite"
    assert paired_tests._verdict(row(backbone_p_holm=0.2), True, 0.05) == "direction only"
    assert (
        paired_tests._verdict(row(backbone_p_holm=0.2, backbone_up=3, backbone_down=3), True, 0.05) == "not supported"
    )
    assert paired_tests._verdict(row(cliffs_delta=0.0, mean_to=1.0), False, 0.05) == "not supported"
