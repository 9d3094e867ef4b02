"""The best layer with its uncertainty: intervals, paired tests, the validation choice, the tunnel rules."""

import math

import numpy as np
import pandas as pd
import pytest

from tunnelscope.metrics import tunnel
from tunnelscope.metrics.best_layers import best_layer_row, best_layers, validation_choice
from tunnelscope.metrics.paired import (
    accuracy_interval,
    first_argmax,
    last_significantly_below_best,
    mcnemar_p,
    paired_difference_interval,
)
from tunnelscope.probe.predictions import correct, prediction_table, read_predictions


def test_wilson_interval_by_hand():
    """8 of 10: centre (p + z²/2n) / (1 + z²/n), half-width z √(p(1-p)/n + z²/4n²) / (1 + z²/n)."""
    z, p, n = 1.959963984540054, 0.8, 10
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    assert accuracy_interval(8, 10) == pytest.approx((centre - half, centre + half))
    assert accuracy_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    low, high = accuracy_interval(0, 300)
    assert low == 0.0 and 0 < high < 0.02  # a zero count still has an upper bound
    assert all(map(math.isnan, accuracy_interval(0, 0)))


def test_mcnemar_on_a_known_table():
    """10 images only a gets right, 2 only b, 30 both: the exact p is 2 P(X <= 2), X ~ B(12, 1/2)."""
    a = np.array([1] * 10 + [0] * 2 + [1] * 30 + [0] * 8, dtype=bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 30 + [0] * 8, dtype=bool)
    assert mcnemar_p(a, b) == pytest.approx(2 * (1 + 12 + 66) / 2**12)
    assert mcnemar_p(a, b) == mcnemar_p(b, a)
    assert mcnemar_p(a, a) == 1.0  # no discordant image
    # one image apart is never significant
    assert mcnemar_p(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool)) == 1.0


def test_paired_gap_interval_holds_its_estimate_and_covers():
    a = np.array([1] * 10 + [0] * 2 + [1] * 30 + [0] * 8, dtype=bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 30 + [0] * 8, dtype=bool)
    diff, low, high = paired_difference_interval(a, b)
    assert diff == pytest.approx(8 / 50) and low < diff < high and low > 0  # McNemar p 0.04 agrees: > 0
    assert paired_difference_interval(b, a) == pytest.approx((-diff, -high, -low))
    same = paired_difference_interval(a, a)
    assert same[0] == 0 and same[1] < 0 < same[2]
    # coverage of the true difference 0.1 on correlated pairs near 95%
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(1000):
        u = rng.random(200)
        x, y = u < 0.7, (u < 0.6) ^ (rng.random(200) < 0.05)
        true = 0.7 - (0.6 * 0.95 + 0.4 * 0.05)
        _, lo, hi = paired_difference_interval(x, y)
        hits += lo <= true <= hi
    assert 0.93 <= hits / 1000 <= 0.975


def test_ties_go_to_the_earlier_layer():
    assert first_argmax([0.5, 0.7, 0.7, 0.6]) == 1 and first_argmax([np.nan, 0.2, 0.2]) == 1
    rows = pd.DataFrame({"solver": "lbfgs", "val_acc": [0.4, 0.9, 0.9, 0.8]})
    assert validation_choice(rows)[0] == 1
    chosen, why = validation_choice(pd.DataFrame({"solver": "paper", "layer": [1, 2]}))
    assert chosen is None and why == "unavailable: the paper solver has no validation split"


def _one_image_apart(n: int = 300) -> pd.DataFrame:
    """Three layers on n images; layer 2 right on one image more than layer 3 (DeiT on DTD)."""
    labels = np.arange(n) % 3
    wrong = (labels + 1) % 3
    layer1 = np.where(np.arange(n) < 200, labels, wrong)
    layer2 = np.where(np.arange(n) < 297, labels, wrong)
    layer3 = np.where(np.arange(n) < 296, labels, wrong)
    return prediction_table(labels, {"layer_001": layer1, "layer_002": layer2, "layer_003": layer3}, 3)


def _probe_rows(predictions: pd.DataFrame, eval_set: str, val_acc=(0.5, 0.8, 0.8), solver="lbfgs") -> pd.DataFrame:
    acc = correct(predictions, [1, 2, 3]).mean(0)
    return pd.DataFrame(
        {
            "eval_set": eval_set,
            "role": "ood",
            "solver": solver,
            "layer": [1, 2, 3],
            "layer_name": ["conv1", "conv2", "fc"],
            "n_classes": 3,
            "test_acc": acc,
            "val_acc": list(val_acc),
        }
    )


def test_a_one_image_difference_is_a_tunnel_only_under_the_paper_rule():
    predictions = _one_image_apart()
    hits = correct(predictions, [1, 2, 3])
    assert last_significantly_below_best(hits, 0.05) == (False, 1.0)
    curve = hits.mean(0)
    assert tunnel.tunnel_metrics(curve, curve, 3, 3)["tunnel"]  # the paper's rule: 296 < 297 is a tunnel
    significant = tunnel.tunnel_metrics(curve, curve, 3, 3, last_below_best=False)
    assert not significant["tunnel"] and significant["tunnel_length"] == 0 and significant["tunnel_start"] == 3
    assert significant["ood_retained"] == pytest.approx(100 * 296 / 297)  # the data, whatever the rule
    rows = _probe_rows(predictions, "ood")
    assert best_layer_row(rows, predictions, 0.05, "paper")["tunnel"]
    assert not best_layer_row(rows, predictions, 0.05, "significant")["tunnel"]


def test_best_layer_row_on_a_hand_built_table():
    predictions = _one_image_apart()
    row = best_layer_row(_probe_rows(predictions, "ood"), predictions, 0.05, "significant")
    assert (row["best_layer"], row["best_layer_name"], row["best_acc"]) == (2, "conv2", pytest.approx(297 / 300))
    assert row["indistinguishable_layers"] == "2,3" and row["n_indistinguishable"] == 2  # layer 1: 200 / 300
    assert row["val_chosen_layer"] == 2 and row["val_chosen_score"] == 0.8  # tie of 2 and 3 on validation: the earlier
    assert row["last_layer"] == 3 and row["last_acc"] == pytest.approx(296 / 300)
    assert row["gap_best_last"] == pytest.approx(1 / 300) and row["gap_best_last_ci_low"] < 0
    assert row["best_vs_last_p"] == 1.0 and row["chance"] == pytest.approx(1 / 3) and row["n_test"] == 300
    for name in ("best_acc", "val_chosen_acc", "last_acc", "gap_best_last", "gap_val_chosen_last"):
        assert row[f"{name}_ci_low"] <= row[name] <= row[f"{name}_ci_high"], name
    sklearn = best_layer_row(
        _probe_rows(predictions, "ood", (np.nan,) * 3, "sklearn"), predictions, 0.05, "significant"
    )
    assert pd.isna(sklearn["val_chosen_layer"]) and math.isnan(sklearn["gap_val_chosen_last"])
    assert sklearn["val_selection"].startswith("unavailable")


def test_the_validation_choice_ignores_the_test_labels():
    """Relabel every test image: the best layer follows, the validation-chosen layer stays."""
    predictions = _one_image_apart()
    rows = _probe_rows(predictions, "ood", (0.3, 0.6, 0.9))
    before = best_layer_row(rows, predictions, 0.05, "significant")
    relabelled = predictions.assign(label=predictions.layer_001)  # now layer 1 is always right
    after = best_layer_row(rows, relabelled, 0.05, "significant")
    assert (before["best_layer"], after["best_layer"]) == (2, 1)
    assert before["val_chosen_layer"] == after["val_chosen_layer"] == 3
    assert after["val_chosen_acc"] != before["val_chosen_acc"]  # its test accuracy is re-scored, its choice is not


def test_best_layers_table_in_config_order_and_cell_facts(tmp_path):
    preds = _one_image_apart()
    probes = pd.concat([_probe_rows(preds, "a"), _probe_rows(preds, "b")])
    info = {"arch": "vggm11", "seed": 0, "label": "VGGm-11"}
    table = best_layers(
        probes, {"a": preds, "b": preds}, info, {"ood_sets": ["b", "a"], "alpha": 0.05, "tunnel_rule": "paper"}
    )
    assert table.ood_set.tolist() == ["b", "a"] and table.ood_index.tolist() == [1, 2]
    assert table.label.eq("VGGm-11").all() and table.tunnel.all() and table.confidence.eq(0.95).all()
    with pytest.raises(ValueError, match="OOD set c: no probe rows or no predictions"):
        best_layers(probes, {"a": preds}, info, {"ood_sets": ["c"], "alpha": 0.05, "tunnel_rule": "paper"})
    # a predictions table is known by the probe table beside it, not by its path
    path = tmp_path / "anywhere.parquet"
    preds.to_parquet(path)
    beside = _probe_rows(preds, "toy-blur", solver="lbfgs")
    assert list(read_predictions([path], [beside])) == [("lbfgs", "toy-blur")]
    with pytest.raises(ValueError, match="1 predictions tables for 2 probe tables"):
        read_predictions([path], [beside, beside])


def test_cell_metrics_under_the_significant_rule_needs_predictions():
    preds = _one_image_apart()
    ood = _probe_rows(preds, "ood").assign(n_classes=3)
    probes = pd.concat([ood.assign(eval_set="idset", role="id"), ood])
    params = {
        "id_start_thresholds": [0.95],
        "ood_sets": ["ood"],
        "alignment_layer": "last",
        "alignment_id": "probe",
        "tunnel_rule": "significant",
        "alpha": 0.05,
    }
    table = tunnel.cell_metrics(probes, {}, params, {"ood": preds})
    assert (
        not table.tunnel.iloc[0] and table.last_vs_best_p.iloc[0] == 1.0 and table.tunnel_rule.iloc[0] == "significant"
    )
    paper = tunnel.cell_metrics(probes, {}, {**params, "tunnel_rule": "paper"}, {"ood": preds})
    assert paper.tunnel.iloc[0] and paper.ood_retained.iloc[0] == table.ood_retained.iloc[0]
    with pytest.raises(ValueError, match="metrics.tunnel_rule significant: OOD set ood has no predictions table"):
        tunnel.cell_metrics(probes, {}, params)


def test_readable_table_and_figure(tmp_path):
    from PIL import Image

    from tunnelscope.figures.best_layers import best_layers_figure, summary_table

    preds = _one_image_apart()
    probes = _probe_rows(preds, "glyphs")
    info = {"arch": "vggm11", "id_dataset": "toy", "resolution": 32, "augmentation": "none", "seed": 0}
    best = best_layers(probes, {"glyphs": preds}, info, {"ood_sets": ["glyphs"], "alpha": 0.05, "tunnel_rule": "paper"})
    line = summary_table(best).iloc[0]
    assert line["best layer"] == "2 (conv2)" and line["best OOD acc % [95% CI]"].startswith("99.0 [")
    assert line["indistinguishable layers (McNemar p ≥ α)"] == "2,3" and line["tunnel (paper rule)"] == "yes"
    assert line["gap best − last, points [95% CI]"].startswith("0.3 [-")
    curves = probes.assign(**info, n_test=300)
    best_layers_figure(best, curves, str(tmp_path / "b.png"), str(tmp_path / "b.pdf"))
    with Image.open(tmp_path / "b.png") as img:
        assert img.size[0] > 600 and (tmp_path / "b.pdf").stat().st_size > 1000
