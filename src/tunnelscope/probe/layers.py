"""Linear probes: one multinomial logistic regression per layer, all layers in one job.

Solvers (``probe.solver``):
- ``lbfgs`` (default): full-batch L-BFGS in torch on standardised features. The L2 strength is
  chosen on a seeded, stratified validation split of the probe's training data (never on the
  test split), walking the grid from strong to weak with warm starts, then refit on all
  training data. Written on torch rather than scikit-learn so it runs in float32 or bfloat16
  (``probe.precision``) on the job's device (GPU when present) and reuses each fit as the next
  one's starting point.
- ``sklearn``: scikit-learn's LogisticRegression (lbfgs) at a fixed ``C``; a reference.
- ``paper``: the papers' recipe, AdamW with label smoothing for a fixed number of epochs on raw
  features; every layer's head is trained in the same pass over the data each epoch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from tunnelscope.features.store import layer_files, read_embeddings
from tunnelscope.io import atomic_path
from tunnelscope.probe.lbfgs import fit_lbfgs_probe
from tunnelscope.probe.logistic import fit_sklearn_probe
from tunnelscope.probe.recipe import fit_paper_probes
from tunnelscope.registry import CELL_VARIABLES
from tunnelscope.runtime import pick_device

log = logging.getLogger("tunnelscope.probe")

CELL_KEYS = (*CELL_VARIABLES, "eval_set", "role", "pooling")


# ---------------------------------------------------------------- L-BFGS solver


def probe_layers(embed_dir: str, params: dict, family: str = "cnn", threads: int | None = None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Probe every layer of one (cell, eval set): one row per layer, and each layer's probe as
    (d + 1, C) float32 weights on raw features, bias last (``layer_NNN`` keys; write_weights;
    protocols.probe_logits scores them).
    ``threads`` caps torch's CPU threads (the job's share of the cores; torch's default takes
    them all)."""
    if threads:
        torch.set_num_threads(threads)
    front = {k: params[k] for k in CELL_KEYS}
    # The solvers read their own seed as "seed"; in the job's params that key is the cell's.
    settings = {**params, "seed": params["probe_seed"]}
    device = pick_device()  # a GPU slot of its own, as every job that computes on a device
    metas, data = [], []
    for path in layer_files(Path(embed_dir) / params["pooling"]):
        meta, x, y, split = read_embeddings(path)
        train, test = split == "train", split == "test"
        metas.append((meta, int(train.sum()), int(test.sum())))
        data.append((x[train], y[train], x[test], y[test]))
    n_classes = int(metas[0][0]["num_classes"])
    started = time.perf_counter()
    if params["solver"] == "paper":
        recipe = {**params["paper"], "seed": settings["seed"]}
        results = fit_paper_probes([(d[0], d[2]) for d in data], data[0][1], data[0][3], n_classes, recipe, family, device)
    else:
        results = []
        for x_train, y_train, x_test, y_test in tqdm(data, desc=f"probe {params['eval_set']}", leave=False):
            if params["solver"] == "lbfgs":
                results.append(fit_lbfgs_probe(x_train, y_train, x_test, y_test, n_classes, settings, device))
            else:
                results.append(fit_sklearn_probe(x_train, y_train, x_test, y_test, params["C"], params["max_iter"], params["standardize"], n_classes))
    rows, weights = [], {}
    for (meta, n_train, n_test), result in zip(metas, results):
        weights[f"layer_{meta['layer']:03d}"] = result.pop("weights")
        if not result["converged"]:
            log.warning("layer %d: probe did not converge in %d iterations", meta["layer"], result["n_iter"])
        log.info("layer %3d %-24s dim %5d test acc %.4f", meta["layer"], meta["layer_name"], meta["dim"], result["test_acc"])
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
    log.info("%d layers probed in %.1fs (%s)", len(rows), time.perf_counter() - started, params["solver"])
    return pd.DataFrame(rows), weights


def write_weights(weights: dict[str, np.ndarray], path: str | Path) -> None:
    """Probe weights as one uncompressed .npz (np.load reads a layer without the others)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: savez adds no suffix
        np.savez(fh, **weights)

