"""Probe protocols: stored probe weights, zero-shot scoring, solver comparison, t-SNE, row selection."""

import numpy as np
import pandas as pd
import pytest

from inmemory import write_embeddings
from tunnelscope.features.store import layer_path, read_embeddings
from tunnelscope.metrics.tsne import choose_rows, tsne_layers
from tunnelscope.probe.lbfgs import fit_lbfgs_probe
from tunnelscope.probe.paper_recipe import fit_paper_probes
from tunnelscope.probe.sklearn_logistic import fit_sklearn_probe
from tunnelscope.protocols.solver_comparison import solver_comparison
from tunnelscope.protocols.zero_shot import (
    probe_logits,
    zero_shot_layers,
    zero_shot_summary,
)
from tunnelscope.registry import SOLVER_COMPARED_METRICS

LBFGS = {
    "standardize": True,
    "max_iter": 100,
    "l2_grid": [1e-2, 1e-3],
    "val_fraction": 0.2,
    "select_max_iter": 20,
    "tol": 1e-4,
    "precision": "fp32",
    "probe_seed": 0,
}
PAPER = {
    "epochs": 4,
    "batch_size": 32,
    "lr": 0.01,
    "weight_decay": 0.0,
    "label_smoothing": 0.1,
    "report": "best_test",
    "reshuffle": True,
    "init_std": 0.01,
    "repeats": 1,
    "probe_seed": 0,
}


def _blobs(n=240, d=12, classes=3, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2.0, (classes, d))
    y = np.arange(n) % classes
    return (centres[y] + rng.normal(0, 1.0, (n, d)) + shift).astype(np.float32), y


def _accuracy(weights, x, y):
    return float((probe_logits(weights, x).argmax(1) == y).mean())


@pytest.mark.parametrize("classes", [2, 3])
def test_stored_weights_reproduce_every_solvers_reported_accuracy(classes):
    x, y = _blobs(classes=classes)
    xtr, ytr, xte, yte = x[:160], y[:160], x[160:], y[160:]
    for result in (
        fit_lbfgs_probe(xtr, ytr, xte, yte, classes, LBFGS),
        fit_sklearn_probe(xtr, ytr, xte, yte, 1.0, 200, True),
        fit_sklearn_probe(xtr, ytr, xte, yte, 1.0, 200, False),
    ):
        assert result["weights"].shape == (13, classes) and result["weights"].dtype == np.float32
        assert _accuracy(result["weights"], xte, yte) == pytest.approx(result["test_acc"], abs=1e-9)
        assert _accuracy(result["weights"], xtr, ytr) == pytest.approx(result["train_acc"], abs=1e-9)
    for report in ("best_test", "last"):  # the paper recipe keeps the weights of the epoch it reports
        (row,) = fit_paper_probes([(xtr, xte)], ytr, yte, classes, {**PAPER, "report": report})
        assert _accuracy(row["weights"], xte, yte) == pytest.approx(row["test_acc"], abs=1e-9)


def test_read_embeddings_select_equals_the_rows_of_a_full_read(tmp_path):
    rng = np.random.default_rng(1)
    n, d = 5000, 300  # several row groups (1024-row minimum per group)
    vectors = rng.normal(size=(n, d)).astype(np.float16)
    labels, splits = rng.integers(0, 7, n), np.where(rng.random(n) < 0.3, "test", "train")
    write_embeddings(tmp_path / "layer_001.parquet", vectors, labels, splits, np.arange(n), {"layer": 1})
    _, full, full_labels, full_splits = read_embeddings(tmp_path / "layer_001.parquet")
    keep = (full_splits == "test") & (full_labels < 3)
    _, some, some_labels, some_splits = read_embeddings(
        tmp_path / "layer_001.parquet", select=lambda lab, spl: (spl == "test") & (lab < 3)
    )
    np.testing.assert_array_equal(some, full[keep])
    np.testing.assert_array_equal(some_labels, full_labels[keep])
    assert set(some_splits) == {"test"}
    _, none, _, _ = read_embeddings(tmp_path / "layer_001.parquet", select=lambda lab, spl: np.zeros(len(lab), bool))
    assert none.shape == (0, d)


def _shifted_dir(tmp_path, layers):
    """Embedding files of a shifted test split; layer k's test rows are the blobs plus noise k."""
    for k, (x, y) in enumerate(layers, start=1):
        write_embeddings(
            layer_path(tmp_path, "avg2x2", k),
            x.astype(np.float16),
            y,
            np.array(["test"] * len(y)),
            np.arange(len(y)),
            {"layer": k},
        )
    return tmp_path


def test_zero_shot_scores_the_id_probe_on_shifted_rows_and_picks_the_layer_on_validation(tmp_path):
    x, y = _blobs(n=400)
    rng = np.random.default_rng(5)
    clean_fit = fit_lbfgs_probe(x[:200], y[:200], x[200:], y[200:], 3, LBFGS)
    shifted = [(x[200:] + rng.normal(0, s, x[200:].shape).astype(np.float32), y[200:]) for s in (0.5, 6.0)]
    directory = _shifted_dir(tmp_path / "shifted", shifted)
    clean = _shifted_dir(tmp_path / "clean", [(x[200:], y[200:])] * 2)
    weights = {"layer_001": clean_fit["weights"], "layer_002": clean_fit["weights"]}
    id_probes = pd.DataFrame(
        {
            "layer": [1, 2],
            "layer_name": ["a", "b"],
            "relative_depth": [0.5, 1.0],
            "test_acc": [clean_fit["test_acc"]] * 2,
        }
    )
    params = {
        "arch": "a",
        "id_dataset": "toy",
        "resolution": 32,
        "augmentation": "none",
        "seed": 0,
        "eval_set": "toy-noise",
        "pooling": "avg2x2",
        "val_fraction": 0.25,
        "split_seed": 0,
    }
    layers = zero_shot_layers(id_probes, weights, weights, clean, directory, params)
    assert layers.n_val.tolist() == [50, 50] and layers.n_test.tolist() == [150, 150]
    assert layers.clean_test_acc.iloc[0] == layers.clean_test_acc.iloc[1] >= layers.zero_shot_test_acc.max() - 0.02
    # the mild shift keeps most of the clean accuracy, the strong one loses it
    assert layers.zero_shot_test_acc[0] > layers.zero_shot_test_acc[1] + 0.1
    # the same weights as both protocols' probe: the two protocols agree row for row
    np.testing.assert_allclose(layers.zero_shot_test_acc, layers.shifted_probe_test_acc)
    summary = zero_shot_summary(layers).iloc[0]
    assert summary.zero_shot_layer == 1 and summary.zero_shot_acc == layers.zero_shot_test_acc[0]
    assert summary.zero_shot_last_acc == layers.zero_shot_test_acc[1] and summary.num_layers == 2
    pd.testing.assert_frame_equal(
        layers, zero_shot_layers(id_probes, weights, weights, clean, directory, params)
    )  # seeded split
    other = zero_shot_layers(id_probes, weights, weights, clean, directory, {**params, "split_seed": 1})
    assert not other.zero_shot_val_acc.equals(layers.zero_shot_val_acc) or not other.zero_shot_test_acc.equals(
        layers.zero_shot_test_acc
    )


def test_zero_shot_breaks_ties_towards_the_deeper_layer():
    rows = [
        {
            "arch": "a",
            "id_dataset": "t",
            "resolution": 32,
            "augmentation": "none",
            "seed": 0,
            "eval_set": "n",
            "layer": k,
            "clean_test_acc": 0.9,
            "zero_shot_val_acc": v,
            "zero_shot_test_acc": t,
            "shifted_probe_test_acc": p,
            "n_val": 10,
            "n_test": 90,
        }
        for k, v, t, p in ((1, 0.5, 0.5, 0.6), (2, 0.8, 0.7, 0.8), (3, 0.8, 0.75, 0.8), (4, 0.7, 0.75, 0.7))
    ]
    summary = zero_shot_summary(pd.DataFrame(rows)).iloc[0]
    assert summary.zero_shot_layer == 3 and summary.zero_shot_oracle_layer == 4  # ties: the deeper
    assert summary.shifted_probe_layer == 2  # the paper's l_m: the first layer at the maximum
    assert not summary.zero_shot_before_penultimate  # layer 3 of 4 is the penultimate


def test_sklearn_weights_cover_classes_absent_from_training():
    x, y = _blobs(classes=4)
    seen = y != 2
    result = fit_sklearn_probe(x[seen], y[seen], x, y, 1.0, 200, True, n_classes=4)
    assert result["weights"].shape == (13, 4) and (probe_logits(result["weights"], x).argmax(1) != 2).all()
    assert _accuracy(result["weights"], x, y) == pytest.approx(result["test_acc"], abs=1e-9)


def test_solver_comparison_measures_differences_and_agreement():
    keys = {"arch": "a", "id_dataset": "toy", "resolution": 32, "augmentation": "none"}
    rows = []
    for seed in range(4):
        for solver, retained, tunnel in (("lbfgs", 80.0 + seed, True), ("paper", 70.0 + 2 * seed, seed < 2)):
            rows.append(
                {
                    **dict.fromkeys(SOLVER_COMPARED_METRICS, 1.0),  # the metrics not set here
                    **keys,
                    "seed": seed,
                    "ood_set": "x",
                    "solver": solver,
                    "ood_retained": retained,
                    "pearson": 0.5,
                    "alignment": 0.1 * seed,
                    "tunnel_start": 3,
                    "ood_best_layer": 3,
                    "ood_last_acc": 0.4,
                    "tunnel": tunnel,
                }
            )
    table = solver_comparison(pd.DataFrame(rows), "lbfgs").set_index("metric")
    retained = table.loc["ood_retained"]
    assert retained.solver == "paper" and retained.pairs == 4
    assert retained.mean_difference == pytest.approx(np.mean([(70 + 2 * s) - (80 + s) for s in range(4)]))
    assert retained.spearman == pytest.approx(1.0)  # both order the seeds alike
    assert retained.tunnel_agreement == pytest.approx(0.5)
    assert (
        retained.seeds == 4
        and retained.mean_difference_ci_low < retained.mean_difference < retained.mean_difference_ci_high
    )
    assert np.isnan(table.loc["pearson"].spearman)  # constant: no rank correlation
    assert table.index.tolist() == list(SOLVER_COMPARED_METRICS)
    with pytest.raises(ValueError, match="the metrics table has no column 'pearson'"):
        solver_comparison(pd.DataFrame(rows).drop(columns="pearson"), "lbfgs")


def test_tsne_is_finite_seeded_and_shows_the_chosen_images_at_every_layer(tmp_path):
    x, y = _blobs(n=300, d=16, classes=6)
    splits = np.where(np.arange(300) < 200, "train", "test")
    for k in (1, 2):
        write_embeddings(
            layer_path(tmp_path, "avg2x2", k),
            (x * k).astype(np.float16),
            y,
            splits,
            np.arange(300),
            {"layer": k, "layer_name": f"conv{k}"},
        )
    params = {
        "arch": "a",
        "id_dataset": "toy",
        "resolution": 32,
        "augmentation": "none",
        "seed": 0,
        "pooling": "avg2x2",
        "classes": 4,
        "per_class": 10,
        "perplexity": 30.0,
        "max_iter": 300,
        "tsne_seed": 0,
    }
    coords = tsne_layers(tmp_path, params)
    assert sorted(coords.layer.unique()) == [1, 2] and np.isfinite(coords[["x", "y"]]).all().all()
    counts = coords.groupby(["layer", "label"]).size().unstack()
    assert counts.shape == (2, 4) and (counts == 10).all().all()  # the same 4 classes x 10 images at each layer
    assert (coords[coords.layer == 1].label.to_numpy() == coords[coords.layer == 2].label.to_numpy()).all()
    pd.testing.assert_frame_equal(coords, tsne_layers(tmp_path, params))
    other = tsne_layers(tmp_path, {**params, "tsne_seed": 1})
    assert not np.allclose(other.x.to_numpy(), coords.x.to_numpy())
    keep = choose_rows(y, splits, 4, 10, 0)
    assert keep.sum() == 40 and (splits[keep] == "test").all()
    assert (coords.class_name == "class " + coords.label.astype(str)).all()  # a source without names
    names = [f"bird{c}" for c in range(6)]
    for k in (1, 2):  # the dataset's names, as embed copies them from the prepared store
        write_embeddings(
            layer_path(tmp_path / "named", "avg2x2", k),
            x.astype(np.float16),
            y,
            splits,
            np.arange(300),
            {"layer": k, "layer_name": f"conv{k}", "class_names": names},
        )
    named = tsne_layers(tmp_path / "named", params)
    assert (named.class_name == [names[c] for c in named.label]).all()
