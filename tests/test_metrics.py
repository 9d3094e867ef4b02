import math

import numpy as np
import pandas as pd
import pytest

from tunnelscope import registry
from tunnelscope.metrics import tunnel as metrics


def test_tunnel_hand_computed():
    id_curve = [0.2, 0.4, 0.6, 0.8, 0.9]
    ood = [0.3, 0.6, 0.5, 0.4, 0.3]
    m = metrics.tunnel_metrics(id_curve, ood, id_classes=10, ood_classes=5)
    assert m["ood_best_layer"] == 2 and m["tunnel"] and m["tunnel_start"] == 2
    assert m["tunnel_length"] == 3
    assert m["ood_retained"] == pytest.approx(50.0)
    assert m["alignment"] == pytest.approx((0.9 - 0.1) * (0.3 - 0.2))
    # Pearson by hand.
    x, y = np.array(id_curve), np.array(ood)
    r = ((x - x.mean()) * (y - y.mean())).sum() / math.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    assert m["pearson"] == pytest.approx(r)


def test_no_tunnel_when_the_last_layer_is_best():
    m = metrics.tunnel_metrics([0.1, 0.5, 0.9], [0.2, 0.3, 0.4], 10, 10)
    assert not m["tunnel"] and m["tunnel_length"] == 0 and m["ood_retained"] == 100.0
    assert m["tunnel_start"] == 3


def test_tie_with_the_last_layer_is_no_tunnel():
    m = metrics.tunnel_metrics([0.1, 0.5, 0.9, 0.9], [0.2, 0.6, 0.5, 0.6], 10, 10)
    assert m["ood_best_layer"] == 2  # first of the tied maxima
    assert not m["tunnel"] and m["ood_retained"] == 100.0


def test_constant_curve_has_no_tunnel_and_undefined_pearson():
    m = metrics.tunnel_metrics([0.1, 0.5, 0.9], [0.5, 0.5, 0.5], 10, 10)
    assert not m["tunnel"] and math.isnan(m["pearson"])


def test_id_tunnel_start_rule():
    curve = [0.2, 0.5, 0.93, 0.97, 0.96, 1.0]
    assert metrics.id_tunnel_start(curve, 0.95) == 4
    assert metrics.id_tunnel_start(curve, 0.98) == 6
    assert metrics.id_tunnel_start(curve, 0.9) == 3


@pytest.mark.parametrize(
    "value,name",
    [
        (100, "negligible"),
        (95, "negligible"),
        (94.9, "weak"),
        (90, "weak"),
        (85, "medium"),
        (80, "medium"),
        (79.99, "strong"),
        (10, "strong"),
    ],
)
def test_strength_bands(value, name):
    assert metrics.strength(value) == name


def test_normalise():
    assert metrics.normalise([0.2, 0.4]).tolist() == [0.5, 1.0]
    assert metrics.normalise([0.0, 0.0]).tolist() == [0.0, 0.0]


def test_mismatched_curves_are_rejected():
    with pytest.raises(ValueError):
        metrics.tunnel_metrics([0.1, 0.2], [0.1, 0.2, 0.3], 10, 10)


def _probe_rows(eval_set, role, curve, n_classes):
    return pd.DataFrame(
        {
            "eval_set": eval_set,
            "role": role,
            "layer": np.arange(1, len(curve) + 1),
            "test_acc": curve,
            "n_classes": n_classes,
        }
    )


def test_cell_metrics_table():
    probes = pd.concat(
        [
            _probe_rows("idset", "id", [0.2, 0.6, 0.9], 10),
            _probe_rows("oodA", "ood", [0.5, 0.8, 0.4], 4),
            _probe_rows("oodB", "ood", [0.1, 0.2, 0.3], 2),
        ]
    )
    info = dict(
        arch="vggm11",
        id_dataset="idset",
        resolution=32,
        augmentation="none",
        seed=0,
        family="cnn",
        stem=3,
        spatial_reduction=0.5,
        depth=11,
        id_classes=10,
        gamma=2.0,
        params=100,
        width=1.0,
        test_acc=0.7,
    )
    params = {
        "id_start_thresholds": [0.95],
        "ood_sets": ["oodB", "oodA"],
        "alignment_layer": "last",
        "alignment_id": "probe",
        "tunnel_rule": "paper",
        "alpha": 0.05,
    }
    table = metrics.cell_metrics(probes, info, params)
    assert set(registry.METRICS) <= set(table.columns)  # every metric later stages name is computed
    assert table.ood_set.tolist() == ["oodB", "oodA"] and table.ood_index.tolist() == [1, 2]  # the config's order
    table = table.set_index("ood_set")
    assert table.loc["oodA", "ood_retained"] == pytest.approx(50.0)
    assert table.loc["oodB", "ood_retained"] == 100.0
    # Mean retained 75 -> strong.
    assert set(table.strength) == {"strong"}
    assert table.loc["oodA", "id_start_95"] == 3 and table.loc["oodA", "id_tunnel_length_95"] == 0
    assert table.loc["oodA", "arch"] == "vggm11" and table.loc["oodA", "backbone_test_acc"] == 0.7
    assert table.loc["oodA", "alignment"] == pytest.approx((0.9 - 0.1) * (0.4 - 0.25))
    # The alternatives of the alignment: at the OOD peak (layer 2), and with the backbone's top-1.
    at_peak = metrics.cell_metrics(probes, info, {**params, "alignment_layer": "ood_best"}).set_index("ood_set")
    assert at_peak.loc["oodA", "alignment"] == pytest.approx((0.6 - 0.1) * (0.8 - 0.25))
    backbone = metrics.cell_metrics(probes, info, {**params, "alignment_id": "backbone"}).set_index("ood_set")
    assert backbone.loc["oodA", "alignment"] == pytest.approx((0.7 - 0.1) * (0.4 - 0.25))
    with pytest.raises(ValueError, match="OOD set oodC: no probe rows"):
        metrics.cell_metrics(probes, info, {**params, "ood_sets": ["oodA", "oodC"]})
