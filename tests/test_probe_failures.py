"""Probes that fail say so (probe/failure.py): the planted NaN case of issue 27, a float32 eigh of
a moment matrix with many dead channels on one thread, recovers through the float64 fallback; a
fit nothing recovers is ``converged: false`` with its reason and no accuracy, and the metrics
count it as missing."""

import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from test_best_layers import _one_image_apart
from test_best_layers import _probe_rows as best_layer_rows
from test_probe import LBFGS, PAPER, blobs, probe_job_params, write_layers

from tunnelscope.metrics import tunnel
from tunnelscope.metrics.best_layers import best_layer_row
from tunnelscope.metrics.health import probe_failure_lines
from tunnelscope.probe import lbfgs, sklearn_logistic
from tunnelscope.probe.failure import NO_CLASS, ProbeFailure
from tunnelscope.probe.paper_recipe import fit_paper_probes

REAL_EIGH = torch.linalg.eigh
GRID = dict(LBFGS, l2_grid=[1e-2])


@pytest.fixture
def one_thread():
    """The reported run's setting: torch on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dead_channels(n=700, d=368, dead=237, c=5, seed=0):
    """The reported layer's shape: d features of which ``dead`` are exactly zero (dead ReLU
    channels), the live ones noisy class blobs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    x = np.zeros((n, d), np.float32)
    x[:, rng.permutation(d)[: d - dead]] = (rng.normal(size=(c, d - dead)) * 0.3)[y] + rng.normal(size=(n, d - dead))
    return x, y


def float64_reference(x, y, x_test, l2):
    """scikit-learn's float64 fit of the same objective on the standardised live channels."""
    from sklearn.linear_model import LogisticRegression

    live = x.std(0) > 0
    mean, std = x[:, live].mean(0), x[:, live].std(0)
    model = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=5000)
    model.fit(((x[:, live] - mean) / std).astype(np.float64), y)
    return model.predict(((x_test[:, live] - mean) / std).astype(np.float64))


def nan_eigh_in(dtypes):
    """torch.linalg.eigh returning NaN for inputs of ``dtypes`` (as the reporter's LAPACK did)."""

    def eigh(matrix):
        if matrix.dtype in dtypes:
            return torch.full(matrix.shape[:1], math.nan, dtype=matrix.dtype), torch.eye(
                len(matrix), dtype=matrix.dtype
            )
        return REAL_EIGH(matrix)

    return eigh


def test_the_planted_case_recovers_through_the_float64_fallback(one_thread):
    x, y = dead_channels()
    notes = []
    _, _, _, basis = lbfgs.prepare_features(torch.from_numpy(x[:500]), True, notes=notes)
    assert basis is not None and all(t.isfinite().all() for t in basis)
    result = lbfgs.fit_lbfgs_probe(x[:500], y[:500], x[500:], y[500:], 5, GRID)
    assert result["failure"] == "" and result["converged"] and result["n_iter"] > 0
    reference = float64_reference(x[:500], y[:500], x[500:], 1e-2)
    assert np.mean(result["test_pred"] == reference) >= 0.97  # the same classifier, up to float32 rounding
    assert abs(result["test_acc"] - np.mean(reference == y[500:])) <= 0.02
    # float32 eigh of this matrix either raises or returns NaN here (LAPACK builds differ); both are caught
    if notes:
        assert "float32 eigh of the 368x368 moment matrix" in notes[0] and "float64 eigh of its 131 live" in notes[0]
        assert result["fallback"] == notes[0]


def test_a_nan_eigh_is_caught_and_the_fallback_gives_the_float64_answer(one_thread, monkeypatch):
    x, y = dead_channels(seed=1)
    monkeypatch.setattr(torch.linalg, "eigh", nan_eigh_in({torch.float32}))
    result = lbfgs.fit_lbfgs_probe(x[:500], y[:500], x[500:], y[500:], 5, GRID)
    assert "returned values that are not finite" in result["fallback"] and result["converged"]
    reference = float64_reference(x[:500], y[:500], x[500:], 1e-2)
    assert abs(result["test_acc"] - np.mean(reference == y[500:])) <= 0.02
    monkeypatch.setattr(torch.linalg, "eigh", nan_eigh_in({torch.float32, torch.float64}))
    plain = lbfgs.fit_lbfgs_probe(x[:500], y[:500], x[500:], y[500:], 5, GRID)
    assert plain["fallback"].endswith("too: no preconditioner") and plain["failure"] == ""
    assert abs(plain["test_acc"] - result["test_acc"]) <= 0.02


def test_a_non_finite_loss_fails_the_layer_with_no_accuracy(monkeypatch):
    x, y = blobs()
    monkeypatch.setattr(torch, "log_softmax", lambda logits, dim: torch.full_like(logits, math.nan))
    result = lbfgs.fit_lbfgs_probe(x[:200], y[:200], x[200:], y[200:], 3, LBFGS)
    assert result["converged"] is False and result["failure"].startswith("loss not finite at L-BFGS iteration 0")
    assert "with the preconditioner: fitted without it" in result["fallback"]  # tried both ways
    assert math.isnan(result["test_acc"]) and math.isnan(result["train_acc"]) and math.isnan(result["val_acc"])
    assert (result["test_pred"] == NO_CLASS).all() and np.isnan(result["weights"]).all()
    assert result["weights"].shape == (9, 3)


def test_a_line_search_that_gives_up_is_not_convergence():
    """The reported layer: no acceptable step from the start was recorded converged, n_iter 0."""
    gradient = torch.ones(4)

    def flat(u):  # a gradient that promises a decrease the loss never shows
        return 1.0, gradient

    assert minimize(flat)[1:] == (0, False)

    def nan_beyond_start(u):
        return (1.0 if not u.abs().sum() else math.nan), gradient

    with pytest.raises(ProbeFailure, match="loss not finite at all 10 trial steps of L-BFGS iteration 0"):
        minimize(nan_beyond_start)
    with pytest.raises(ProbeFailure, match="gradient not finite at L-BFGS iteration 0"):
        minimize(lambda u: (1.0, torch.full((4,), math.nan)))


def minimize(fg):
    return lbfgs.minimize_lbfgs(fg, torch.zeros(4), max_iter=50, tol=1e-6)


def test_a_diverged_paper_head_fails_and_leaves_the_others_alone():
    x, y = blobs(d=6)
    broken = x.copy()
    broken[3, 0] = np.inf
    params = dict(PAPER, probe_seed=0)
    clean = fit_paper_probes([(x[:200], x[200:]), (x[:200, :3], x[200:, :3])], y[:200], y[200:], 3, params)
    rows = fit_paper_probes([(broken[:200], x[200:]), (x[:200, :3], x[200:, :3])], y[:200], y[200:], 3, params)
    assert rows[0]["failure"] == "train loss not finite in epoch 1" and rows[0]["converged"] is False
    assert math.isnan(rows[0]["test_acc"]) and (rows[0]["test_pred"] == NO_CLASS).all()
    assert rows[1]["failure"] == "" and rows[1]["weights"].tobytes() == clean[1]["weights"].tobytes()


def test_sklearn_coefficients_that_are_not_finite_fail_the_layer(monkeypatch):
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression.fit

    def nan_fit(self, x, y):
        fit(self, x, y)
        self.coef_[0, 0] = math.nan
        return self

    monkeypatch.setattr(LogisticRegression, "fit", nan_fit)
    x, y = blobs()
    result = sklearn_logistic.fit_sklearn_probe(x[:200], y[:200], x[200:], y[200:], 1.0, 100, True)
    assert result["failure"] == "1 coefficients not finite" and math.isnan(result["test_acc"])


@pytest.mark.parametrize("solver", ["lbfgs", "sklearn", "paper"])
def test_the_probe_job_names_a_failed_layer(tmp_path, monkeypatch, caplog, solver):
    import tunnelscope.features.store as store
    import tunnelscope.probe.job as job

    write_layers(tmp_path)
    read = store.read_embeddings

    def nan_in_layer_two(path):
        meta, x, y, split = read(path)
        if meta["layer"] == 2:
            x = x.copy()
            x[0, 0] = np.nan
        return meta, x, y, split

    monkeypatch.setattr(job, "read_embeddings", nan_in_layer_two)
    monkeypatch.setattr(job, "job_device", lambda: torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="tunnelscope.probe"):
        table, weights, predictions = job.probe_layers(str(tmp_path), probe_job_params(solver))
    bad = table.set_index("layer").loc[2]
    assert bad.failure.startswith("features not finite: 1 values in the training rows") and not bad.converged
    assert math.isnan(bad.test_acc) and (predictions["layer_002"] == NO_CLASS).all()
    assert table.set_index("layer").loc[1].failure == "" and table.set_index("layer").loc[1].test_acc > 0.6
    assert "layer 2 (conv2): probe failed" in caplog.text and "1 of 2 layers failed (2;" in caplog.text


METRICS = {
    "id_start_thresholds": [0.95],
    "ood_sets": ["oodA"],
    "alignment_layer": "last",
    "alignment_id": "probe",
    "tunnel_rule": "paper",
    "alpha": 0.05,
}


def probe_table(id_curve, ood_curve, failed_ood=()):
    rows = []
    for eval_set, role, curve in (("idset", "id", id_curve), ("oodA", "ood", ood_curve)):
        for layer, acc in enumerate(curve, start=1):
            failure = "loss not finite at L-BFGS iteration 0" if role == "ood" and layer in failed_ood else ""
            rows.append(
                {
                    "eval_set": eval_set,
                    "role": role,
                    "layer": layer,
                    "test_acc": math.nan if failure else acc,
                    "n_classes": 10,
                    "failure": failure,
                }
            )
    return pd.DataFrame(rows)


def test_metrics_count_a_failed_layer_as_missing_not_as_accuracy():
    """Layer 2 had the best OOD accuracy before its probe failed; now it is missing."""
    id_curve, ood_curve = [0.3, 0.6, 0.8, 0.9], [0.3, 0.7, 0.5, 0.4]
    healthy = tunnel.cell_metrics(probe_table(id_curve, ood_curve), {}, METRICS).iloc[0]
    row = tunnel.cell_metrics(probe_table(id_curve, ood_curve, failed_ood=[2]), {}, METRICS).iloc[0]
    assert (healthy.ood_best_layer, healthy.n_failed_layers, healthy.failed_layers) == (2, 0, "")
    assert (row.ood_best_layer, row.ood_best_acc, row.n_failed_layers, row.failed_layers) == (3, 0.5, 1, "2")
    assert row.tunnel and row.ood_retained == pytest.approx(80.0) and row.tunnel_length == 1
    assert row.pearson == pytest.approx(tunnel.pearson([0.3, 0.8, 0.9], [0.3, 0.5, 0.4]))  # over layers 1, 3, 4
    chance = tunnel.cell_metrics(probe_table(id_curve, [0.3, 0.1, 0.5, 0.4]), {}, METRICS).iloc[0]
    assert chance.pearson != row.pearson  # a chance accuracy in its place would have counted


def test_a_failed_last_layer_leaves_the_tunnel_undecided():
    table = tunnel.cell_metrics(probe_table([0.3, 0.6, 0.9], [0.3, 0.7, 0.5], failed_ood=[3]), {}, METRICS)
    row = table.iloc[0]
    assert row.tunnel is None and math.isnan(row.ood_retained) and math.isnan(row.tunnel_length)
    assert math.isnan(row.ood_last_acc) and math.isnan(row.alignment) and table.strength.iloc[0] is None
    assert row.id_start_95 == 3  # the ID curve is whole


def test_best_layers_leave_failed_probes_out():
    predictions = _one_image_apart()
    rows = best_layer_rows(predictions, "ood")
    rows.loc[rows.layer == 2, ["test_acc", "failure"]] = [math.nan, "loss not finite"]
    rows["failure"] = rows.failure.fillna("")
    row = best_layer_row(rows, predictions, 0.05, "paper")
    assert (row["best_layer"], row["n_failed_layers"], row["failed_layers"], row["num_layers"]) == (3, 1, "2", 3)
    assert row["indistinguishable_layers"] == "3" and row["val_chosen_layer"] == 3 and not row["tunnel"]
    rows.loc[rows.layer == 3, ["test_acc", "failure"]] = [math.nan, "loss not finite"]
    undecided = best_layer_row(rows, predictions, 0.05, "paper")
    assert undecided["tunnel"] is None and math.isnan(undecided["gap_best_last"]) and undecided["best_layer"] == 1


def test_the_page_names_the_failed_probes():
    curves = pd.DataFrame(
        {
            "arch": "vggm11",
            "id_dataset": "toy",
            "resolution": 32,
            "augmentation": "none",
            "seed": 0,
            "eval_set": "oodA",
            "solver": "lbfgs",
            "layer": [1, 2],
            "layer_name": ["conv1", "conv2"],
            "failure": ["", "loss not finite at L-BFGS iteration 0"],
        }
    )
    lines = probe_failure_lines(curves)
    assert lines[0].startswith("Probe health: 1 of 2 probes failed")
    assert lines[1:] == ["vggm11_toy_r32_none_s0, oodA (lbfgs) layer 2 (conv2): loss not finite at L-BFGS iteration 0"]
    assert probe_failure_lines(curves.assign(failure="")) == [
        "Probe health: all 2 probes fitted (docs/protocol.md, Failed probes)."
    ]


def test_a_failed_last_id_probe_leaves_the_continual_swap_no_layer_to_cut_at():
    from tunnelscope.protocols.continual import locate_tunnel

    with pytest.raises(ValueError, match="task 2's network: the last layer's ID probe failed"):
        locate_tunnel({1: np.array([0.5, 0.9, 0.9]), 2: np.array([0.5, 0.9, np.nan])}, 0.95, "earlier")
    assert locate_tunnel({1: np.array([0.5, np.nan, 0.9])}, 0.95, "task1")["start_layer"] == 3


def test_solvers_agree_on_a_tunnel_only_where_both_decided():
    from tunnelscope.protocols.solver_comparison import _agreement

    a = pd.Series([True, None, False, None], dtype=object)
    b = pd.Series([True, None, True, False], dtype=object)
    assert _agreement(a, b) == 0.5  # the pairs with an undecided side are left out
    assert math.isnan(_agreement(pd.Series([None], dtype=object), pd.Series([None], dtype=object)))
