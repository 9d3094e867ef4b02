import subprocess
import sys

import numpy as np
import pytest
import torch

from tunnelscope.data.splits import stratified_split
from tunnelscope.probe.lbfgs import (
    fit_lbfgs_probe,
    fit_softmax,
    matmul_precision,
    minimize_lbfgs,
    prepare_features,
)
from tunnelscope.probe.paper_recipe import fit_paper_probes
from tunnelscope.probe.sklearn_logistic import fit_sklearn_probe

RNG = np.random.default_rng(0)
LBFGS = {
    "standardize": True,
    "val_fraction": 0.2,
    "probe_seed": 0,
    "l2_grid": [1e-1, 1e-3],
    "select_max_iter": 50,
    "max_iter": 300,
    "tol": 1e-6,
    "precision": "fp32",
}


def blobs(n=300, d=8, c=3, spread=1.0, rng=RNG):
    centers = rng.normal(size=(c, d)) * 3
    y = rng.integers(0, c, size=n)
    return (centers[y] + rng.normal(size=(n, d)) * spread).astype(np.float32), y


def test_softmax_matches_sklearn_at_the_same_l2():
    x, y = blobs(spread=3.0)
    l2 = 1e-2
    w, n_iter, converged = fit_softmax(torch.from_numpy(x), torch.from_numpy(y), 3, l2, max_iter=500, tol=1e-7)
    from sklearn.linear_model import LogisticRegression

    ref = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=5000).fit(x.astype(np.float64), y)
    assert converged
    np.testing.assert_allclose(w[:-1].numpy().T - w[:-1].numpy().T.mean(0), ref.coef_ - ref.coef_.mean(0), atol=2e-3)


def correlated(n=400, d=12, c=3, rng=RNG):
    """Features that are mixtures of a few factors: an ill-conditioned problem."""
    x, y = blobs(n, 3, c, spread=2.0, rng=rng)
    mix = rng.normal(size=(3, d))
    return (x @ mix + 0.05 * rng.normal(size=(n, d))).astype(np.float32), y


def test_preconditioned_fit_reaches_the_sklearn_optimum():
    x, y = correlated()
    x = x - x.mean(0)
    l2 = 1e-3
    features, _, _, basis = prepare_features(torch.from_numpy(x), standardize=False)
    w, _, converged = fit_softmax(features, torch.from_numpy(y), 3, l2, max_iter=2000, tol=1e-6, basis=basis)
    from sklearn.linear_model import LogisticRegression

    ref = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-12, max_iter=100000).fit(x.astype(np.float64), y)
    assert converged
    np.testing.assert_allclose(w[:-1].numpy().T, ref.coef_, atol=3e-3)


def test_bf16_products_keep_accuracy():
    # A draw of its own: how well the blobs separate (68-98% over seeds) must not depend on which
    # tests, of this file or another importing it, drew from RNG first.
    x, y = correlated(rng=np.random.default_rng(3))
    one_l2 = dict(LBFGS, tol=1e-4, l2_grid=[1e-3])
    full = fit_lbfgs_probe(x[:300], y[:300], x[300:], y[300:], 3, one_l2)
    half = fit_lbfgs_probe(x[:300], y[:300], x[300:], y[300:], 3, dict(one_l2, precision="bf16"))
    assert full["test_acc"] > 0.8 and abs(half["test_acc"] - full["test_acc"]) <= 0.02


def test_lbfgs_probe_selects_on_validation_and_scores_test():
    x, y = blobs()
    result = fit_lbfgs_probe(x[:200], y[:200], x[200:], y[200:], 3, LBFGS)
    assert result["test_acc"] > 0.9 and result["l2"] in LBFGS["l2_grid"] and result["converged"]


def test_holdout_is_stratified_and_seeded():
    y = np.repeat(np.arange(3), 10)
    fit, val = stratified_split(y, 0.2, 0, stream=2718)
    assert np.bincount(y[val]).tolist() == [2, 2, 2] and not set(fit) & set(val)
    assert np.array_equal(val, stratified_split(y, 0.2, 0, stream=2718)[1])


def test_sklearn_reference_solver():
    x, y = blobs()
    result = fit_sklearn_probe(x[:200], y[:200], x[200:], y[200:], 1.0, 300, True)
    assert result["test_acc"] > 0.9 and result["converged"]


def test_paper_recipe_trains_every_layer_in_one_pass():
    x, y = blobs(d=6)
    layers = [(x[:200], x[200:]), (x[:200, :3], x[200:, :3])]
    params = {
        "probe_seed": 0,
        "lr": None,
        "weight_decay": None,
        "epochs": 15,
        "batch_size": 32,
        "label_smoothing": 0.1,
        "report": "last",
        "reshuffle": True,
        "init_std": 0.01,
        "repeats": 1,
    }
    rows = fit_paper_probes(layers, y[:200], y[200:], 3, params)
    assert len(rows) == 2 and rows[0]["test_acc"] > 0.85 and rows[0]["epoch"] == 15
    best = fit_paper_probes(layers, y[:200], y[200:], 3, dict(params, report="best_test"))
    assert all(b["test_acc"] >= r["test_acc"] - 1e-9 for b, r in zip(best, rows))
    # One seeded order for every epoch (the released code's cached features) is another run.
    fixed = fit_paper_probes(layers, y[:200], y[200:], 3, dict(params, reshuffle=False))
    assert fixed[0]["test_acc"] > 0.85 and not np.array_equal(fixed[0]["weights"], rows[0]["weights"])
    repeated = fit_paper_probes(layers, y[:200], y[200:], 3, dict(params, repeats=3))  # the ViT probes' sampler
    assert repeated[0]["test_acc"] > 0.8 and not np.array_equal(repeated[0]["weights"], rows[0]["weights"])


def test_non_converged_probes_are_flagged():
    x, y = blobs(spread=3.0)
    quick = dict(LBFGS, max_iter=1, select_max_iter=1)
    assert fit_lbfgs_probe(x[:200], y[:200], x[200:], y[200:], 3, quick)["converged"] is False
    assert fit_sklearn_probe(x[:200], y[:200], x[200:], y[200:], 1.0, 1, True)["converged"] is False


def test_auto_precision_resolves_and_is_recorded():
    x, y = blobs()
    assert matmul_precision("fp32") == "fp32" and matmul_precision("bf16") == "bf16"
    assert matmul_precision("auto") in ("fp32", "bf16")
    result = fit_lbfgs_probe(x[:200], y[:200], x[200:], y[200:], 3, dict(LBFGS, precision="auto"))
    assert result["precision"] == matmul_precision("auto") and result["test_acc"] > 0.9


def test_lbfgs_probe_does_not_import_torch_dynamo():
    """torch.optim's constructor imports torch._dynamo (1.4 s per probe job); the solver avoids it."""
    code = (
        "import sys, numpy as np\n"
        "from tunnelscope.probe.lbfgs import fit_lbfgs_probe\n"
        "rng = np.random.default_rng(0); x = rng.normal(size=(90, 4)).astype(np.float32); y = rng.integers(0, 3, 90)\n"
        f"fit_lbfgs_probe(x, y, x, y, 3, {LBFGS!r})\n"
        "assert 'torch._dynamo' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_minimize_lbfgs_reaches_the_minimum_of_a_quadratic():
    scales = torch.logspace(0, 2, 20, dtype=torch.float64)  # condition number 100

    def fg(u):
        return float(0.5 * (scales * (u - 1) ** 2).sum()), scales * (u - 1)

    u, n_iter, converged = minimize_lbfgs(fg, torch.zeros(20, dtype=torch.float64), max_iter=200, tol=1e-10)
    assert converged and n_iter < 120 and float((scales * (u - 1)).abs().max()) <= 1e-10


def test_wide_features_are_standardised_without_the_preconditioner(monkeypatch):
    import tunnelscope.probe.lbfgs as probe

    x, y = correlated()
    rotated = fit_lbfgs_probe(x[:300], y[:300], x[300:], y[300:], 3, LBFGS)
    monkeypatch.setattr(probe, "MAX_ROTATED_DIM", 4)
    features, mean, std, basis = prepare_features(torch.from_numpy(x), standardize=True)
    assert basis is None
    np.testing.assert_allclose(features.mean(0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(features.std(0, unbiased=False).numpy(), 1, atol=1e-4)
    plain = fit_lbfgs_probe(x[:300], y[:300], x[300:], y[300:], 3, LBFGS)
    assert abs(plain["test_acc"] - rotated["test_acc"]) <= 0.02 and plain["converged"]


def test_solver_table_names_the_registry_solvers():
    from tunnelscope.probe import lbfgs, paper_recipe, sklearn_logistic
    from tunnelscope.probe.job import SOLVER_FITS
    from tunnelscope.registry import SOLVER_MODULES, SOLVERS

    assert SOLVER_FITS.keys() == SOLVER_MODULES.keys() == SOLVERS.keys()
    # each solver's entry point, found in the module the registry names
    assert SOLVER_FITS["lbfgs"] == (lbfgs.fit_layer, True)
    assert SOLVER_FITS["sklearn"] == (sklearn_logistic.fit_layer, True)
    assert SOLVER_FITS["paper"] == (paper_recipe.fit_layers, False)


PAPER = {
    "lr": None,
    "weight_decay": None,
    "epochs": 3,
    "batch_size": 32,
    "label_smoothing": 0.1,
    "report": "last",
    "reshuffle": True,
    "init_std": 0.01,
    "repeats": 1,
}
CELL = {
    "arch": "vggm11",
    "id_dataset": "toy",
    "resolution": 32,
    "augmentation": "none",
    "seed": 5,
    "eval_set": "toy",
    "role": "id",
    "pooling": "avg2x2",
}


def probe_job_params(solver):
    """A probe job's params (as Study.probe_params gives them): the cell's, the solver's, probe_seed."""
    solver_keys = {k: v for k, v in LBFGS.items() if k != "probe_seed"} | {"C": 1.0, "paper": PAPER}
    return {**CELL, **solver_keys, "solver": solver, "probe_seed": 0}


def write_layers(embed_dir, dims=(4, 6)):
    from inmemory import write_embeddings
    from tunnelscope.features.store import layer_path

    # its own seeded draw: the module's RNG would make the layers depend on the tests run before
    x, y = blobs(d=max(dims), rng=np.random.default_rng(0))
    split = np.where(np.arange(len(y)) < 200, "train", "test")
    for layer, dim in enumerate(dims, start=1):
        meta = {"layer": layer, "layer_name": f"conv{layer}", "num_layers": len(dims), "num_classes": 3}
        write_embeddings(
            layer_path(embed_dir, "avg2x2", layer), x[:, :dim].astype(np.float16), y, split, np.arange(len(y)), meta
        )


def test_probe_job_takes_its_device_from_the_runtime(tmp_path, monkeypatch):
    """The device is the job's (runtime.job_device, set up by the probe script), as for training and extraction."""
    import tunnelscope.probe.job as job

    write_layers(tmp_path)
    asked = []
    monkeypatch.setattr(job, "job_device", lambda: asked.append("device") or torch.device("cpu"))
    table, weights, _ = job.probe_layers(str(tmp_path), probe_job_params("lbfgs"))
    assert asked == ["device"] and table.layer.tolist() == [1, 2] and sorted(weights) == ["layer_001", "layer_002"]
    assert (table.seed == 5).all() and table.test_acc.min() > 0.8


def test_per_layer_solvers_stream_the_layers_and_the_paper_recipe_reads_them_all(tmp_path, monkeypatch):
    import tunnelscope.probe.job as job

    write_layers(tmp_path)
    events, read = [], job.read_embeddings

    def reading(*args, **kwargs):
        events.append("read")
        return read(*args, **kwargs)

    def fitting(name):
        fit = job.SOLVER_FITS[name].fit

        def recorded(*args):
            events.append("fit")
            return fit(*args)

        return job.SolverFit(recorded, job.SOLVER_FITS[name].per_layer)

    monkeypatch.setattr(job, "read_embeddings", reading)
    for solver, expected in (
        ("lbfgs", ["read", "fit", "read", "fit"]),
        ("sklearn", ["read", "fit", "read", "fit"]),
        ("paper", ["read", "read", "fit"]),
    ):
        monkeypatch.setitem(job.SOLVER_FITS, solver, fitting(solver))
        events.clear()
        table, _, _ = job.probe_layers(str(tmp_path), probe_job_params(solver))
        assert events == expected and table.solver.eq(solver).all() and table.n_train.eq(200).all(), solver


@pytest.mark.parametrize("solver", ["lbfgs", "sklearn", "paper"])
def test_predictions_are_the_ones_test_acc_was_computed_from(tmp_path, solver):
    """Every solver returns its class per test image; the job's predictions table holds them in
    the test split's order, and each layer's accuracy on it is exactly the table's test_acc."""
    import tunnelscope.probe.job as job
    from tunnelscope.features.store import layer_path, read_embeddings
    from tunnelscope.probe.predictions import correct

    write_layers(tmp_path)
    table, _, predictions = job.probe_layers(str(tmp_path), probe_job_params(solver))
    _, _, y, split = read_embeddings(layer_path(tmp_path, "avg2x2", 1))
    assert predictions.columns.tolist() == ["label", "layer_001", "layer_002"]
    assert predictions.dtypes.eq(np.int16).all() and predictions.label.tolist() == y[split == "test"].tolist()
    np.testing.assert_array_equal(correct(predictions, [1, 2]).mean(0), table.test_acc.to_numpy())
    assert table.n_test.eq(len(predictions)).all()
