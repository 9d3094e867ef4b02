"""The probe job: one multinomial logistic regression per layer of one (cell, eval set), all
layers in one job, with the solver named by ``probe.solver``.

Each solver is a module of this package (``lbfgs``: L-BFGS on standardised features, the L2
strength chosen on a validation split, the default; ``sklearn``: scikit-learn at a fixed ``C``, a
reference; ``paper``: the papers' AdamW recipe) with its config keys in ``registry.SOLVERS`` and
its module in ``registry.SOLVER_MODULES``; the module's ``fit_layer`` or ``fit_layers`` is what
the job calls (``SolverFit``), with the job's params (the solver's keys and ``probe_seed``).

A layer whose probe failed (probe/failure.py: features, loss, preconditioner or weights not
finite, no fallback recovering the fit) is a row with ``converged`` false, the reason in
``failure`` and NaN accuracies; the job log names every such layer, and every fit a fallback
recovered (``fallback``).
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
import torch

from tunnelscope.features.store import layer_files, read_embeddings, read_metadata
from tunnelscope.io import atomic_path
from tunnelscope.joblog import progress_bar
from tunnelscope.probe.failure import failed_result, features_problem
from tunnelscope.probe.predictions import layer_column, prediction_table
from tunnelscope.registry import CELL_VARIABLES, SOLVER_MODULES
from tunnelscope.runtime import JobRuntime, job_device

log = logging.getLogger("tunnelscope.probe")

CELL_KEYS = (*CELL_VARIABLES, "eval_set", "role", "pooling")


class SolverFit(NamedTuple):
    """How the job calls a solver. ``per_layer``: ``fit(x_train, y_train, x_test, y_test,
    n_classes, settings, device)`` -> one result, and the layers stream through it (read one, fit
    it, drop it); else ``fit(layers, n_classes, settings, family, device)`` -> one result per
    layer, on every layer's (x_train, y_train, x_test, y_test) at once. A result names the
    ``precision`` of its products and the ``device_type`` it ran on (sklearn: always the CPU)."""

    fit: Callable
    per_layer: bool


def _solver_fit(module_name: str) -> SolverFit:
    module = importlib.import_module(f"tunnelscope.probe.{module_name}")
    per_layer = hasattr(module, "fit_layer")
    return SolverFit(module.fit_layer if per_layer else module.fit_layers, per_layer)


# registry.SOLVERS name -> its fit (tests/test_probe.py checks that the two name the same solvers).
SOLVER_FITS = {name: _solver_fit(module) for name, module in SOLVER_MODULES.items()}


def _read_layer(path: Path) -> tuple[tuple[dict, int, np.ndarray], tuple]:
    """((metadata, n_train, test labels), (x_train, y_train, x_test, y_test)) of one layer file."""
    meta, x, y, split = read_embeddings(path)
    train, test = split == "train", split == "test"
    return (meta, int(train.sum()), y[test]), (x[train], y[train], x[test], y[test])


def _fit_layer(fit: Callable, path: Path, n_classes: int, settings: dict, device):
    """Read one layer and fit it, unless its features are not finite (then a failed result, no
    solver having run); its features are freed on return, before the next is read."""
    info, data = _read_layer(path)
    problem = features_problem(data[0], data[2])
    if problem:
        return info, failed_result(problem, data[0].shape[1], n_classes, len(data[3]), precision="", device_type="")
    return info, fit(*data, n_classes, settings, device)


def _fit_together(fit: Callable, files: list[Path], n_classes: int, settings: dict, family: str, device) -> list:
    """Every layer in memory at once, for a solver that fits them all in one pass (a layer of
    features that are not finite fails there, and its reason says why)."""
    infos, layers = zip(*map(_read_layer, files))
    results = fit(list(layers), n_classes, settings, family, device)
    for (x_train, _, x_test, _), result in zip(layers, results):
        problem = features_problem(x_train, x_test) if result["failure"] else ""
        result["failure"] = f"{problem}: {result['failure']}" if problem else result["failure"]
    return list(zip(infos, results))


def _log_fit(meta: dict, result: dict) -> None:
    """The job log's line on one layer, and a warning for a failed, recovered or unconverged fit."""
    where = f"layer {meta['layer']} ({meta['layer_name']})"
    if result["failure"]:
        log.warning("%s: probe failed, its accuracy is missing: %s", where, result["failure"])
    elif not result["converged"]:
        log.warning("%s: probe did not converge in %d iterations", where, result["n_iter"])
    if result["fallback"]:
        log.warning("%s: %s", where, result["fallback"])
    log.info(
        "layer %3d %-24s dim %5d test acc %.4f", meta["layer"], meta["layer_name"], meta["dim"], result["test_acc"]
    )


def probe_layers(
    embed_dir: str, params: dict, family: str = "cnn", *, runtime: JobRuntime | None = None
) -> tuple[pd.DataFrame, dict[str, np.ndarray], pd.DataFrame]:
    """Probe every layer of one (cell, eval set): one row per layer (with the ``precision`` of
    its products and the ``device_type`` it ran on, "cpu" or "cuda", known only here in the job:
    params are fixed where the DAG is built, often a node without the GPU); each layer's probe as
    (d + 1, C) float32 weights on raw features, bias last (``layer_NNN`` keys; write_weights;
    protocols.probe_logits scores them); and the predictions (``prediction_table``), from which
    each row's ``test_acc`` was computed.
    ``runtime.threads`` caps torch's CPU threads (the job's share of the cores; without a
    runtime, torch's default takes them all)."""
    if runtime is not None:
        torch.set_num_threads(max(1, runtime.threads))
    if params["solver"] not in SOLVER_FITS:
        raise ValueError(f"probe.solver: unknown solver {params['solver']!r}; known: {', '.join(SOLVER_FITS)}")
    solver = SOLVER_FITS[params["solver"]]
    front = {k: params[k] for k in CELL_KEYS}
    device = job_device()  # the job's, set up by its script (a GPU of its own), as for training
    files = layer_files(embed_dir, params["pooling"])
    n_classes = int(read_metadata(files[0])["num_classes"])
    started = time.perf_counter()
    if solver.per_layer:
        fitted = (
            _fit_layer(solver.fit, path, n_classes, params, device)
            for path in progress_bar(files, desc=f"probe {params['eval_set']}", leave=False)
        )
    else:
        fitted = _fit_together(solver.fit, files, n_classes, params, family, device)
    rows, weights, predicted, labels = [], {}, {}, None
    for (meta, n_train, labels), result in fitted:
        weights[f"layer_{meta['layer']:03d}"] = result.pop("weights")
        predicted[layer_column(meta["layer"])] = result.pop("test_pred")
        n_test = len(labels)
        _log_fit(meta, result)
        rows.append(
            {
                **front,
                "solver": params["solver"],
                "layer": meta["layer"],
                "layer_name": meta["layer_name"],
                "relative_depth": meta["layer"] / meta["num_layers"],
                "dim": meta["dim"],
                "n_train": n_train,
                "n_test": n_test,
                "n_classes": n_classes,
                **result,
            }
        )
    fitted_rows = [row for row in rows if row["device_type"]] or rows  # a layer of bad features ran nowhere
    log.info(
        "%d layers probed in %.1fs (%s on %s, %s products)",
        len(rows),
        time.perf_counter() - started,
        params["solver"],
        fitted_rows[0]["device_type"],
        fitted_rows[0]["precision"],
    )
    failed = [row["layer"] for row in rows if row["failure"]]
    if failed:
        log.warning(
            "%s: %d of %d layers failed (%s; column failure): their accuracies are NaN, missing in the metrics",
            params["eval_set"],
            len(failed),
            len(rows),
            ", ".join(map(str, failed)),
        )
    return pd.DataFrame(rows), weights, prediction_table(labels, predicted, n_classes)


def write_weights(weights: dict[str, np.ndarray], path: str | Path) -> None:
    """Probe weights as one uncompressed .npz (np.load reads a layer without the others)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: savez adds no suffix
        np.savez(fh, **weights)
