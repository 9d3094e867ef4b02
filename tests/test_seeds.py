"""Seeds: mean and t-interval per backbone in the aggregate, the analysis, the tables and the figures."""

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from scipy import stats  # noqa: E402

from tunnelscope.analysis import comparisons as analysis  # noqa: E402
from tunnelscope.analysis import table as analysis_table  # noqa: E402
from tunnelscope.figures import paper, plots, tables  # noqa: E402
from tunnelscope.metrics.seeds import seed_summary, summarise, t_interval  # noqa: E402

# The planted truth: % OOD retained per (augmentation, OOD set); seeds add N(0, 4) noise.
PLANTED = {("none", "a"): 70.0, ("none", "b"): 60.0, ("rrc_flip", "a"): 85.0, ("rrc_flip", "b"): 80.0}
FACTS = {
    "arch": "vggm11",
    "label": "VGGm-11",
    "id_dataset": "toy",
    "resolution": 32,
    "family": "cnn",
    "stem": 3,
    "spatial_reduction": 0.5,
    "depth": 11,
    "id_classes": 4,
    "gamma": 9.5,
}


def planted_metrics(n_seeds: int, noise: float = 4.0) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rows = []
    for seed, ((aug, ood), truth) in itertools.product(range(n_seeds), PLANTED.items()):
        rows.append(
            {
                **FACTS,
                "augmentation": aug,
                "seed": seed,
                "ood_set": ood,
                "ood_index": "ab".index(ood) + 1,
                "ood_retained": truth + rng.normal(0, noise),
                "pearson": 0.5 + rng.normal(0, 0.05),
                "alignment": 0.2,
                "ood_last_acc": 0.5,
                "tunnel": seed % 2 == 0,
            }
        )
    return pd.DataFrame(rows)


def test_seed_summary_is_the_t_interval_on_the_seed_mean():
    frame = pd.DataFrame(
        {
            "g": ["x"] * 4 + ["y"] * 2 + ["z"],
            "seed": [0, 1, 2, 3, 0, 1, 0],
            "v": [1.0, 2.0, 4.0, 7.0, 5.0, 5.0, 3.0],
            "flag": [True, False, True, True, True, True, False],
        }
    )
    out = seed_summary(frame, ["g"], ["v", "flag"]).set_index("g")
    low, high = stats.t.interval(0.95, 3, loc=3.5, scale=stats.sem([1.0, 2.0, 4.0, 7.0]))
    assert (
        out.loc["x", "v"] == 3.5
        and out.loc["x", "v_ci_low"] == pytest.approx(low)
        and out.loc["x", "v_ci_high"] == pytest.approx(high)
    )
    assert out.loc["x", "flag"] == 0.75 and out.n_seeds.tolist() == [4, 2, 1]
    assert out.loc["y", "v_ci_low"] == out.loc["y", "v_ci_high"] == 5.0  # no spread, no width
    assert np.isnan(out.loc["z", "v_ci_low"]) and np.isnan(out.loc["z", "v_ci_high"])  # one seed: no interval
    assert (
        seed_summary(frame, ["g"], ["v"], confidence=0.5).loc[0, "v_ci_high"] < high
    )  # a lower confidence, a narrower interval
    assert t_interval([1.0, 2.0, 4.0, 7.0, np.nan])[1:] == pytest.approx((low, high, 4))


def test_seed_summary_refuses_groups_that_repeat_a_seed():
    """Keys that miss a variable (here the OOD set) would count an OOD set as a seed."""
    with pytest.raises(ValueError, match="seed 0 occurs more than once .*'augmentation': 'none'"):
        seed_summary(planted_metrics(2), ["arch", "augmentation"], ["ood_retained"])
    with pytest.raises(KeyError, match="'colour'"):
        seed_summary(planted_metrics(2), ["arch", "colour"], ["ood_retained"])


def test_intervals_narrow_as_seeds_are_added_on_a_planted_effect():
    widths = []
    for n in (2, 4, 8):
        summary = summarise("metrics", planted_metrics(n)).set_index(["augmentation", "ood_set"])
        assert summary.n_seeds.eq(n).all()
        for key, truth in PLANTED.items():
            row = summary.loc[key]
            assert row.ood_retained_ci_low < truth < row.ood_retained_ci_high, (n, key)
        widths.append((summary.ood_retained_ci_high - summary.ood_retained_ci_low).mean())
        # The paper tables carry the same intervals, and their mean column is the interval of
        # each seed's mean over the OOD sets.
        csv, latex = tables.ood_table(planted_metrics(n), "ood_retained")
        np.testing.assert_allclose(csv["a ci_low"], summary.xs("a", level="ood_set").ood_retained_ci_low, atol=1e-3)
        assert csv.seeds.eq(n).all() and all(" ± " in cell for cell in latex["mean"])
        truth_mean = [np.mean([PLANTED[aug, o] for o in "ab"]) for aug in ("none", "rrc_flip")]
        assert ((csv["mean ci_low"] < truth_mean) & (truth_mean < csv["mean ci_high"])).all()
    # One group's width moves with its sample SD; over the four, it falls as t(n-1) sigma / sqrt(n).
    assert widths[0] > widths[1] > widths[2]


def test_the_metrics_summary_keeps_the_backbone_and_classes_its_strength():
    summary = summarise("metrics", planted_metrics(3))
    assert summary.columns[:3].tolist() == ["arch", "id_dataset", "resolution"] and "seed" not in summary
    assert summary.tunnel.tolist() == [2 / 3] * 4  # seeds 0 and 2 of 3 have a tunnel
    assert summary.drop_duplicates("augmentation").strength.tolist() == ["strong", "medium"]  # means ~65 and ~82.5


def test_analysis_gives_level_means_and_deltas_an_interval_across_seeds():
    table = analysis_table.check_table(planted_metrics(4))
    tests, means = analysis.comparisons(table, "auto")
    level = means[(means.variable == "augmentation") & (means.target == "ood_retained")].set_index("level")
    assert level.n_seeds.eq(4).all()
    for aug in ("none", "rrc_flip"):
        truth = np.mean([PLANTED[aug, o] for o in "ab"])
        assert level.loc[aug, "seed_ci_low"] < truth < level.loc[aug, "seed_ci_high"]
    row = tests[(tests.variable == "augmentation") & (tests.target == "ood_retained")].iloc[0]
    assert row.n_pairs == 2 * 4 and row.n_seeds == 4  # 2 OOD sets x 4 seeds, each pair within one seed
    assert row.delta_ci_low <= row.cliffs_delta <= row.delta_ci_high <= 1.0
    csv, latex = tables.level_means(means)
    assert {"% retained ci_low", "% retained ci_high", "seeds"} <= set(csv.columns) and " ± " in latex[
        "% retained"
    ].iloc[0]
    csv, latex = tables.effect_sizes(tests)
    assert csv.loc[0, "% retained |δ| ci_high"] == pytest.approx(row.delta_ci_high) and latex.loc[
        0, "% retained |δ|"
    ].endswith("]")
    single_tests, single_means = analysis.comparisons(analysis_table.check_table(planted_metrics(1)), "auto")
    assert single_means.seed_ci_low.isna().all() and single_tests.delta_ci_low.isna().all()
    assert (
        "% retained ci_low" not in tables.level_means(single_means)[0]
        and "seeds" not in tables.effect_sizes(single_tests)[0]
    )


def test_pairs_match_on_the_seed_even_when_a_declared_match_leaves_it_out():
    """Seed 1 lifts every value by 50, augmentation by 1. Paired within seeds, every difference
    is +1; paired across seeds (table order, rows of one level listed seed 1 first) it is ±49."""
    rows = []
    for aug, seed, ood in itertools.product(["none", "rrc_flip"], [0, 1], ["a", "b", "c", "d", "e", "f"]):
        rows.append(
            {
                "arch": "vggm11",
                "augmentation": aug,
                "seed": seed,
                "ood_set": ood,
                "ood_retained": 10.0 + 50 * seed + (aug == "rrc_flip") + "abcdef".index(ood),
                "pearson": 0.5,
                "alignment": 0.1,
            }
        )
    table = pd.DataFrame(rows)
    table = pd.concat(
        [table[table.augmentation == "none"], table[table.augmentation == "rrc_flip"].iloc[::-1]], ignore_index=True
    )
    assert "seed" in analysis.default_match(table, "augmentation")
    spec = {"name": "aug", "variable": "augmentation", "match": ["arch", "ood_set"]}
    assert analysis.comparison_match(table, spec) == ["arch", "ood_set", "seed"]
    across, _ = analysis.pair_rows(
        table[table.augmentation == "none"], table[table.augmentation == "rrc_flip"], spec["match"], None
    )
    assert (across.seed_from != across.seed_to).any()  # what the declared match alone would pair
    tests, _ = analysis.run_comparison(table, spec, 0.05, 200, unit="row")
    row = next(t for t in tests if t["target"] == "ood_retained")
    assert row["n_pairs"] == 12 and row["mean_to"] - row["mean_from"] == pytest.approx(1.0)
    assert row["n_backbone_pairs"] == 1  # one backbone pair, its two seeds averaged
    assert row["cliffs_delta"] > 0 and row["significant"] and row["n_seeds"] == 2
    matched, _ = analysis.pair_rows(
        table[table.augmentation == "none"],
        table[table.augmentation == "rrc_flip"],
        analysis.comparison_match(table, spec),
        None,
    )
    assert (matched.ood_retained_to - matched.ood_retained_from == 1.0).all()
    assert analysis.comparison_match(table, {"name": "s", "variable": "seed"}) == ["arch", "augmentation", "ood_set"]


def probe_rows(seeds, ood_sets=("x", "y")) -> pd.DataFrame:
    """Probe curves of one backbone: each seed shifts every curve by 0.02 x seed."""
    rows = []
    for seed, (name, role) in itertools.product(seeds, [("toy", "id"), *((o, "ood") for o in ood_sets)]):
        for layer in range(1, 7):
            acc = (0.3 + 0.1 * layer if role == "id" else 0.9 - 0.05 * abs(layer - 3)) + 0.02 * seed
            rows.append(
                {
                    "arch": "vggm11",
                    "id_dataset": "toy",
                    "resolution": 32,
                    "augmentation": "none",
                    "seed": seed,
                    "eval_set": name,
                    "role": role,
                    "layer": layer,
                    "relative_depth": layer / 6,
                    "test_acc": acc,
                }
            )
    return pd.DataFrame(rows)


def bands(ax) -> list[PolyCollection]:
    """The shaded areas of an axis (seaborn leaves empty ones where it has nothing to shade)."""
    return [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_paths()]


def test_tunnel_curves_draw_a_band_per_curve_across_seeds():
    fig, (one, three) = plt.subplots(1, 2)
    plots.draw_normalised(one, probe_rows([0]))
    plots.draw_normalised(three, probe_rows([0, 1, 2]))
    assert len(bands(one)) == 1  # one seed: only the OOD band of ±1 SD over the OOD sets, as before
    assert len(bands(three)) == 2  # ID and OOD, each with its seed interval
    id_line = three.get_lines()[0]
    per_seed = np.stack([plots.normalise(probe_rows([s]).query("role == 'id'").test_acc.to_numpy()) for s in (0, 1, 2)])
    np.testing.assert_allclose(id_line.get_ydata(), per_seed.mean(0))
    vertices = bands(three)[0].get_paths()[0].vertices
    at_first = vertices[np.isclose(vertices[:, 0], 1.0), 1]  # the ID band's edges at layer 1
    low, high = stats.t.interval(0.95, 2, loc=per_seed[:, 0].mean(), scale=stats.sem(per_seed[:, 0]))
    assert at_first.min() == pytest.approx(low) and at_first.max() == pytest.approx(high)
    assert "95% CI over 3 seeds" in three.get_legend_handles_labels()[1][1]
    plt.close(fig)


def test_the_overview_has_one_panel_per_backbone(monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, png, pdf: drawn.append(fig))
    curves = pd.concat([probe_rows([0, 1, 2]), probe_rows([5]).assign(augmentation="rrc_flip")])
    plots.overview_figure(curves, str(tmp_path / "o.png"), str(tmp_path / "o.pdf"))
    panels = [ax for ax in drawn[0].axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["vggm11 toy 32px aug=none 3 seeds", "vggm11 toy 32px aug=rrc_flip s5"]
    assert [len(bands(ax)) for ax in panels] == [2, 1]
    plt.close(drawn[0])


def test_paper_figures_draw_seed_bands(monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr(paper, "save_figure", lambda fig, png, pdf: drawn.append(fig))
    curves = pd.concat(
        [
            probe_rows([0, 1, 2]),
            probe_rows([0, 1, 2]).assign(augmentation="rrc_flip", test_acc=lambda t: t.test_acc - 0.1),
        ]
    )
    metrics = planted_metrics(3)
    paper.curves_by_variable(curves, metrics, str(tmp_path / "v.png"), str(tmp_path / "v.pdf"))
    (panel,) = drawn[-1].axes
    assert (
        len(bands(panel)) == 2 and "95% CI over seeds" in panel.get_legend().get_title().get_text()
    )  # one band per augmentation level
    layer_stats = (
        curves[curves.role == "id"]
        .rename(columns={"test_acc": "rankme"})
        .assign(numerical_rank=5.0, nc1=lambda t: t.rankme, cka_to_last=0.5)
    )
    paper.layer_stats_figure(layer_stats, str(tmp_path / "s.png"), str(tmp_path / "s.pdf"))
    assert [len(bands(ax)) for ax in drawn[-1].axes[:4]] == [2, 2, 2, 2]
    assert "(3 seeds)" in drawn[-1].axes[3].get_legend_handles_labels()[1][0]
    paper.layer_stats_figure(layer_stats[layer_stats.seed == 0], str(tmp_path / "s.png"), str(tmp_path / "s.pdf"))
    assert [len(bands(ax)) for ax in drawn[-1].axes[:4]] == [0, 0, 0, 0]  # one seed: lines only, as before
    for fig in drawn:
        plt.close(fig)
