"""The ``sklearn`` solver: scikit-learn's LogisticRegression (lbfgs) at a fixed ``C``; a reference.

Config keys: ``registry.SOLVERS["sklearn"]``.
"""

from __future__ import annotations

import warnings

import numpy as np

from tunnelscope.probe.failure import all_finite, failed_result, nonfinite_count


def fit_sklearn_probe(
    x_train, y_train, x_test, y_test, C: float, max_iter: int, standardize: bool, n_classes: int | None = None
) -> dict:
    """scikit-learn's LogisticRegression; the weights take one column per class of ``n_classes``
    (default those seen), a class absent from the training rows getting a bias no logit reaches.
    ``test_pred``: the class predicted for each test row, in order (``test_acc`` is its mean
    agreement with ``y_test``). Coefficients that are not finite make it a failed result
    (probe/failure.py); scikit-learn itself refuses features that are not finite."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = LogisticRegression(C=C, max_iter=max_iter, solver="lbfgs")
    model = make_pipeline(StandardScaler(), clf) if standardize else clf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    n_iter = int(np.max(clf.n_iter_))
    coef, intercept = clf.coef_, clf.intercept_
    if not (all_finite(coef) and all_finite(intercept)):
        reason = f"{nonfinite_count(coef) + nonfinite_count(intercept)} coefficients not finite"
        return failed_result(
            reason, coef.shape[1], n_classes or len(clf.classes_), len(y_test), **_FACTS, n_iter=n_iter
        )
    if coef.shape[0] == 1:  # binary: one logit z for class 1, i.e. logits (0, z)
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    classes = np.asarray(clf.classes_, dtype=int)
    if n_classes is not None and (len(classes) != n_classes or (classes != np.arange(n_classes)).any()):
        full, bias = np.zeros((n_classes, coef.shape[1])), np.full(n_classes, -1e9)
        full[classes], bias[classes] = coef, intercept
        coef, intercept = full, bias
    if standardize:  # fold the scaler in, so the weights act on raw features like the others'
        scaler = model[0]
        coef = coef / scaler.scale_
        intercept = intercept - coef @ scaler.mean_
    test_pred = model.predict(x_test).astype(np.int64)
    return {
        "train_acc": float(model.score(x_train, y_train)),
        "test_acc": float((test_pred == np.asarray(y_test)).mean()),
        "test_pred": test_pred,
        "n_iter": n_iter,
        "converged": n_iter < max_iter,
        "failure": "",
        "fallback": "",
        "weights": np.vstack([coef.T, intercept[None]]).astype(np.float32),
        **_FACTS,
    }


# scikit-learn keeps float32 features as they are, in numpy on the CPU whatever device the job holds.
_FACTS = {"precision": "fp32", "device_type": "cpu"}


def fit_layer(x_train, y_train, x_test, y_test, n_classes: int, settings: dict, device) -> dict:
    """One layer's probe as the probe job calls it (probe.job.SolverFit); always on the CPU."""
    return fit_sklearn_probe(
        x_train, y_train, x_test, y_test, settings["C"], settings["max_iter"], settings["standardize"], n_classes
    )
