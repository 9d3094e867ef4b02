"""The paper's tables from a study's aggregate tables."""

import numpy as np
import pandas as pd
import pytest

from tunnelscope.figures import tables
from tunnelscope.io import write_table


def _cells():
    rows = [
        ("vggm11", "VGGm-11", 32, "none", 0.50),
        ("vggm11", "VGGm-11", 32, "rrc_flip", 0.60),
        ("vggm11", "VGGm-11", 224, "none", 0.70),
    ]
    rows += [("resnet50-sup", "resnet50-sup", 224, "none", None), ("resnet50-swav", "resnet50-swav", 224, "none", None)]
    return pd.DataFrame(
        [
            {
                "arch": a,
                "label": label,
                "id_dataset": "in",
                "resolution": r,
                "augmentation": aug,
                "seed": 0,
                "test_acc": acc,
            }
            for a, label, r, aug, acc in rows
        ]
    )


def test_id_accuracy_is_laid_out_like_table_11():
    csv, latex = tables.id_accuracy(_cells())
    assert csv.columns.tolist() == [
        "id_dataset",
        "arch",
        "backbone",
        "32 none",
        "32 rrc_flip",
        "224 none",
        "224 rrc_flip",
    ]
    assert csv.arch.tolist() == ["vggm11", "resnet50-sup", "resnet50-swav"]  # grid order, published models kept apart
    assert csv.iloc[0]["32 rrc_flip"] == 0.6 and np.isnan(csv.iloc[0]["224 rrc_flip"])  # a fraction; LaTeX in %
    assert (
        latex.iloc[0]["32²"] == "50.00 / 60.00"
        and latex.iloc[0]["224²"] == "70.00 / –"
        and latex.iloc[1]["224²"] == "–"
    )


def test_ood_tables_average_seeds_and_align_ood_sets_by_position():
    rows = []
    for arch, id_set, oods in (("a", "in", ["x", "cifar100"]), ("b", "cifar100", ["x", "cifar10"])):
        for seed, bump in ((0, 0.0), (1, 10.0)):
            for index, ood in enumerate(oods, start=1):
                rows.append(
                    {
                        "arch": arch,
                        "label": arch.upper(),
                        "id_dataset": id_set,
                        "resolution": 32,
                        "augmentation": "none",
                        "seed": seed,
                        "ood_set": ood,
                        "ood_index": index,
                        "ood_retained": 50.0 + 10 * index + bump,
                    }
                )
    csv, latex = tables.ood_table(pd.DataFrame(rows), "ood_retained")
    bounds = lambda name: [name, f"{name} ci_low", f"{name} ci_high"]  # noqa: E731
    assert csv.columns.tolist() == [
        "id_dataset",
        "arch",
        "backbone",
        "resolution",
        "augmentation",
        *bounds("x"),
        *bounds("cifar100 / cifar10"),
        *bounds("mean"),
        "seeds",
    ]
    assert (
        csv["x"].tolist() == [65.0, 65.0] and csv["mean"].tolist() == [70.0, 70.0] and csv.seeds.tolist() == [2, 2]
    )  # two seeds averaged
    half = 12.7062 * np.std([60.0, 70.0], ddof=1) / np.sqrt(2)  # t(0.975, 1 df) s / sqrt(n)
    np.testing.assert_allclose(csv["x ci_high"] - csv["x"], [half, half], atol=1e-3)
    assert "arch" not in latex and "x ci_low" not in latex and latex.iloc[0]["mean"] == f"70.00 ± {half:.2f}"
    one_seed, latex = tables.ood_table(pd.DataFrame([r for r in rows if r["seed"] == 0]), "ood_retained")
    assert one_seed.columns.tolist() == [
        "id_dataset",
        "arch",
        "backbone",
        "resolution",
        "augmentation",
        "x",
        "cifar100 / cifar10",
        "mean",
    ]
    assert latex.iloc[0]["mean"] == "65.00"  # no interval printed with one seed


def test_latex_is_escaped_and_symbols_are_math(tmp_path):
    paired = pd.DataFrame(
        [
            {
                "comparison": "stem",
                "target": t,
                "level_from": 3,
                "level_to": 7,
                "abs_delta": 0.3,
                "wilcoxon_p": 0.0001,
                "n_pairs": 4,
            }
            for t in ("ood_retained", "pearson", "alignment")
        ]
    )
    csv, latex = tables.effect_sizes(paired)
    assert csv.columns.tolist() == [
        "comparison",
        "level_from",
        "level_to",
        "% retained |δ|",
        "% retained p",
        "Pearson |δ|",
        "Pearson p",
        "alignment |δ|",
        "alignment p",
        "pairs",
    ]
    tables.write("effect_sizes", csv, latex, tmp_path / "e.csv", tmp_path / "e.tex")
    tex = (tmp_path / "e.tex").read_text()
    assert r"\% retained $|\delta|$" in tex and "< 0.001" in tex and r"\caption{" in tex and "δ" not in tex
    assert r"(\%)" not in tex.split("caption")[0] and "%" not in tex.replace(
        r"\%", ""
    )  # no bare % comments the rest out


def test_effect_sizes_show_both_levels_where_the_analysis_has_them():
    paired = pd.DataFrame(
        [
            {
                "comparison": "depth",
                "target": t,
                "level_from": 11,
                "level_to": 17,
                "abs_delta": 0.5,
                "wilcoxon_p": 0.0001,
                "n_pairs": 48,
                "n_backbone_pairs": 6,
                "backbone_p": 0.03125,
                "backbone_p_holm": 0.8125,
                "verdict": "direction only",
            }
            for t in ("ood_retained", "pearson", "alignment")
        ]
    )
    csv, latex = tables.effect_sizes(paired)
    assert csv.columns.tolist()[3:8] == [
        "% retained |δ|",
        "% retained p",
        "% retained p (backbones)",
        "% retained p (backbones, Holm)",
        "% retained verdict",
    ]
    assert csv.columns.tolist()[-2:] == ["pairs", "backbone pairs"] and csv["backbone pairs"].iloc[0] == 6
    assert "% retained p (backbones)" not in latex and latex["Pearson p (backbones, Holm)"].iloc[0] == "0.812"
    assert latex["alignment p"].iloc[0] == "< 0.001" and latex["alignment verdict"].iloc[0] == "direction only"


def test_a_target_the_metric_table_does_not_know_is_an_error_not_a_missing_column():
    means = pd.DataFrame(
        [{"comparison": "depth", "level": 11, "target": t, "mean": 1.0, "n": 4} for t in ("ood_retained", "bogus")]
    )
    with pytest.raises(ValueError, match="target 'bogus' is not an analysis target of registry.METRICS"):
        tables.level_means(means)
    paired = means.rename(columns={"level": "level_from"}).assign(level_to=17, abs_delta=0.1, wilcoxon_p=0.5, n_pairs=4)
    with pytest.raises(ValueError, match="'bogus'"):
        tables.effect_sizes(paired)


def test_accuracy_tables_hold_fractions_and_print_percent():
    """One unit for accuracies in every CSV (a fraction, as in the Parquet tables); the LaTeX
    prints % as the paper does; augmentation levels keep the config's names."""
    rows = [
        {
            "arch": "a",
            "label": "A",
            "id_dataset": "in",
            "resolution": 32,
            "augmentation": aug,
            "seed": 0,
            "ood_set": "x",
            "ood_index": 1,
            "ood_last_acc": acc,
        }
        for aug, acc in (("none", 0.6424000263214111), ("rrc_flip", 0.5))
    ]
    csv, latex = tables.ood_table(pd.DataFrame(rows), "ood_accuracy")
    assert csv["x"].tolist() == [0.6424, 0.5] and latex["x"].tolist() == ["64.24", "50.00"]
    assert csv.augmentation.tolist() == latex.augmentation.tolist() == ["none", "rrc_flip"]
    summary = pd.DataFrame(
        [{"arch": "a", "resolution": 32, "augmentation": "none", "seed": 0, "eval_set": "x-noise", "num_layers": 3}]
    ).assign(
        zero_shot_layer=1,
        zero_shot_acc=0.25,
        zero_shot_last_acc=0.2,
        zero_shot_oracle_acc=0.3,
        shifted_probe_layer=2,
        shifted_probe_acc=0.4,
        shifted_probe_last_acc=0.35,
    )
    csv, latex = tables.zero_shot_table(summary)
    assert csv.zero_shot_acc.tolist() == [0.25] and latex["ZS acc"].tolist() == ["25.00"]
    assert latex.backbone.tolist() == ["a 32² none s0"]


def test_csv_rounds_float_noise_and_parquet_keeps_full_precision(tmp_path):
    table = pd.DataFrame({"acc": np.float32([0.6424, 0.1]).astype(float), "lr": [1.25e-5, 3.0], "n": [1, 2]})
    write_table(table, tmp_path / "t.parquet", tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines() == ["acc,lr,n", "0.6424,1.25e-05,1", "0.1,3,2"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), table, check_exact=True)
