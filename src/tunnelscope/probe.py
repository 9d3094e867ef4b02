"""Linear probes: one multinomial logistic regression per layer, all layers in one job."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from .io import read_embeddings

log = logging.getLogger("tunnelscope.probe")


def fit_probe(x_train, y_train, x_test, y_test, C: float, max_iter: int, standardize: bool) -> dict:
    """Fit one probe; accuracies as fractions, plus whether lbfgs converged."""
    clf = LogisticRegression(C=C, max_iter=max_iter, solver="lbfgs")
    model = make_pipeline(StandardScaler(), clf) if standardize else clf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    n_iter = int(np.max(clf.n_iter_))
    return {
        "train_acc": float(model.score(x_train, y_train)),
        "test_acc": float(model.score(x_test, y_test)),
        "n_iter": n_iter,
        "converged": n_iter < max_iter,
    }


def layer_files(embed_dir: str | Path) -> list[Path]:
    files = sorted(Path(embed_dir).glob("layer_*.parquet"))
    if not files:
        raise FileNotFoundError(f"{embed_dir}: no layer_*.parquet embedding files")
    return files


def probe_layers(embed_dir: str, params: dict) -> pd.DataFrame:
    """Probe every layer of one (cell, eval set): one row per layer."""
    front = {k: params[k] for k in ("arch", "id_dataset", "resolution", "augmentation", "seed", "eval_set", "role", "pooling")}
    rows = []
    files = layer_files(Path(embed_dir) / params["pooling"])
    for path in tqdm(files, desc=f"probe {params['eval_set']}", leave=False):
        meta, x, y, split = read_embeddings(path)
        train, test = split == "train", split == "test"
        result = fit_probe(x[train], y[train], x[test], y[test], params["C"], params["max_iter"], params["standardize"])
        if not result["converged"]:
            log.warning("%s: probe did not converge in %d iterations", path, params["max_iter"])
        rows.append(
            {
                **front,
                "layer": meta["layer"],
                "layer_name": meta["layer_name"],
                "relative_depth": meta["layer"] / meta["num_layers"],
                "dim": meta["dim"],
                "n_train": int(train.sum()),
                "n_test": int(test.sum()),
                "n_classes": int(meta["num_classes"]),
                **result,
            }
        )
        log.info("layer %2d %-24s dim %5d test acc %.4f", meta["layer"], meta["layer_name"], meta["dim"], result["test_acc"])
    return pd.DataFrame(rows)
