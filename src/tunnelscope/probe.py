"""Linear probes: one multinomial logistic regression per layer, all layers in one job.

Solvers (``probe.solver``):
- ``lbfgs`` (default): full-batch L-BFGS in torch on standardised features. The L2 strength is
  chosen on a seeded, stratified validation split of the probe's training data (never on the
  test split), walking the grid from strong to weak with warm starts, then refit on all
  training data. Written on torch rather than scikit-learn so it runs in float32 on the job's
  device (GPU when present) and reuses each fit as the next one's starting point.
- ``sklearn``: scikit-learn's LogisticRegression (lbfgs) at a fixed ``C``; a reference.
- ``paper``: the papers' recipe, AdamW with label smoothing for a fixed number of epochs on raw
  features; every layer's head is trained in the same pass over the data each epoch.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .config import CELL_VARIABLES
from .datasets import stratified_split
from .io import read_embeddings

log = logging.getLogger("tunnelscope.probe")

CELL_KEYS = (*CELL_VARIABLES, "eval_set", "role", "pooling")


# ---------------------------------------------------------------- L-BFGS solver


def _standardise(train: torch.Tensor, *others: torch.Tensor):
    mean = train.mean(0)
    std = train.std(0).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


# Largest feature dim that gets the eigenbasis preconditioner: its set-up (second-moment matrix,
# eigh, rotation) costs ~2 n d^2 + d^3, which above this pays for more L-BFGS steps than it saves.
MAX_ROTATED_DIM = 2048
_MATMUL_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}


def principal_axes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending, >= 0) and eigenvectors of the second-moment matrix of ``x``."""
    s, v = torch.linalg.eigh(x.t() @ x / len(x))
    return s.clamp_min(0), v


def fit_softmax(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    l2: float,
    init: torch.Tensor | None = None,
    max_iter: int = 200,
    tol: float = 1e-4,
    x_t: torch.Tensor | None = None,
    eigenvalues: torch.Tensor | None = None,
):
    """Minimise mean cross-entropy + l2/2 ||W||^2 (bias unpenalised) by L-BFGS.

    Returns (weights (d+1, C) with the bias as last row, iterations, converged). Equivalent
    to scikit-learn's LogisticRegression with C = 1 / (l2 * n). The gradient is written out
    (X^T (P - Y) / n) rather than taken by autograd: with a contiguous X^T (``x_t``, reusable
    across fits) it is one plain matmul, several times faster on CPU than autograd's
    transposed product, and each step reads the data exactly twice. A bfloat16 ``x`` runs
    both products in bfloat16 (float32 accumulation); weights, softmax and loss stay float32.

    With ``eigenvalues`` (``x`` given in the eigenbasis of its second-moment matrix, see
    ``principal_axes``), L-BFGS runs on u = W / scale, scale_j = (eigenvalue_j / C + l2)^-1/2:
    the Hessian's Gauss-Newton approximation is diagonal in that basis, so the rescaling makes it
    close to the identity and L-BFGS needs several times fewer steps on correlated features.
    ``tol`` bounds the largest gradient entry in those coordinates.
    """
    n, d = x.shape
    x_t = x.t().contiguous() if x_t is None else x_t
    onehot = F.one_hot(y, n_classes).float()
    scale = torch.ones(d + 1, 1, device=x.device)
    if eigenvalues is not None:
        scale[:-1, 0] = (eigenvalues / n_classes + l2).rsqrt()
    u = torch.zeros(d + 1, n_classes, device=x.device) if init is None else init.detach().float() / scale
    opt = torch.optim.LBFGS([u], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12, history_size=10, line_search_fn="strong_wolfe")

    @torch.no_grad()
    def closure():
        w = u * scale
        logits = torch.mm(x, w[:-1].to(x.dtype)).float().add_(w[-1])
        log_p = torch.log_softmax(logits, dim=1)
        loss = -(log_p * onehot).sum() / n + 0.5 * l2 * w[:-1].pow(2).sum()
        residual = (log_p.exp_() - onehot) / n
        grad = torch.empty_like(w)
        grad[:-1] = torch.mm(x_t, residual.to(x.dtype)).float().add_(w[:-1], alpha=l2)
        grad[-1] = residual.sum(0)
        u.grad = grad.mul_(scale)
        return loss

    opt.step(closure)
    n_iter = int(opt.state[u]["n_iter"])
    return (u * scale).detach(), n_iter, n_iter < max_iter


def _accuracy(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((x @ w[:-1] + w[-1]).argmax(1) == y).float().mean()) if len(y) else float("nan")


def fit_lbfgs_probe(x_train, y_train, x_test, y_test, n_classes: int, params: dict, device="cpu") -> dict:
    """Choose the L2 strength on a validation split, refit on all training data, score test."""
    xtr = torch.as_tensor(x_train, dtype=torch.float32, device=device)
    xte = torch.as_tensor(x_test, dtype=torch.float32, device=device)
    ytr = torch.as_tensor(y_train, dtype=torch.long, device=device)
    yte = torch.as_tensor(y_test, dtype=torch.long, device=device)
    if params["standardize"]:
        xtr, xte = _standardise(xtr, xte)
    eigenvalues = None
    if xtr.shape[1] <= MAX_ROTATED_DIM:
        # An orthogonal change of basis: the L2 penalty, and so the solution, are unchanged.
        eigenvalues, axes = principal_axes(xtr)
        xtr, xte = xtr @ axes, xte @ axes
    dtype = _MATMUL_DTYPE[params["precision"]]
    fit_idx, val_idx = stratified_split(np.asarray(y_train), params["val_fraction"], params["seed"], stream=2718)
    fit_idx, val_idx = torch.as_tensor(fit_idx, device=device), torch.as_tensor(val_idx, device=device)
    grid = sorted(params["l2_grid"], reverse=True)  # strong to weak: each fit warm-starts the next
    best, w = None, None
    x_fit, y_fit, x_val, y_val = xtr[fit_idx].to(dtype), ytr[fit_idx], xtr[val_idx], ytr[val_idx]
    x_fit_t = x_fit.t().contiguous()
    for l2 in grid:
        w, _, _ = fit_softmax(x_fit, y_fit, n_classes, l2, w, params["select_max_iter"], params["tol"], x_fit_t, eigenvalues)
        acc = _accuracy(w, x_val, y_val)
        if best is None or acc > best[1]:
            best = (l2, acc, w)
    l2, val_acc, w0 = best
    w, n_iter, converged = fit_softmax(xtr.to(dtype), ytr, n_classes, l2, w0, params["max_iter"], params["tol"], eigenvalues=eigenvalues)
    return {
        "train_acc": _accuracy(w, xtr, ytr),
        "test_acc": _accuracy(w, xte, yte),
        "val_acc": val_acc,
        "l2": l2,
        "n_iter": n_iter,
        "converged": converged,
    }


def fit_sklearn_probe(x_train, y_train, x_test, y_test, C: float, max_iter: int, standardize: bool) -> dict:
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
    return {
        "train_acc": float(model.score(x_train, y_train)),
        "test_acc": float(model.score(x_test, y_test)),
        "n_iter": n_iter,
        "converged": n_iter < max_iter,
    }


# ---------------------------------------------------------------- paper recipe


def fit_paper_probes(layers: list[tuple], y_train, y_test, n_classes: int, params: dict, family: str = "cnn", device="cpu") -> list[dict]:
    """The papers' probe recipe for every layer at once.

    ``layers`` holds (x_train, x_test) per layer. One nn.Linear per layer (weights N(0, 0.01)),
    AdamW (lr 1e-3 / wd 0 for CNNs, 1e-2 / 1e-4 for ViTs unless set), label smoothing,
    minibatches shared by all heads, so the data is read once per epoch for all layers.
    Reports the last epoch, or the best test epoch with ``report: best_test`` (the paper's
    optimistic choice).
    """
    gen = torch.Generator().manual_seed(params["seed"])
    lr = params["lr"] or (1e-2 if family == "vit" else 1e-3)
    wd = params["weight_decay"] if params["weight_decay"] is not None else (1e-4 if family == "vit" else 0.0)
    xs_train = [torch.as_tensor(tr, dtype=torch.float32, device=device) for tr, _ in layers]
    xs_test = [torch.as_tensor(te, dtype=torch.float32, device=device) for _, te in layers]
    ytr = torch.as_tensor(y_train, dtype=torch.long, device=device)
    yte = torch.as_tensor(y_test, dtype=torch.long, device=device)
    heads = torch.nn.ModuleList(torch.nn.Linear(x.shape[1], n_classes) for x in xs_train).to(device)
    for head in heads:
        torch.nn.init.normal_(head.weight, 0.0, 0.01, generator=gen)
        torch.nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=wd)
    best = [(-1.0, 0, 0.0)] * len(heads)  # (test acc, epoch, train acc)
    last = best
    for epoch in range(params["epochs"]):
        heads.train()
        order = torch.randperm(len(ytr), generator=gen).to(device)
        for start in range(0, len(order), params["batch_size"]):
            idx = order[start : start + params["batch_size"]]
            loss = sum(F.cross_entropy(head(x[idx]), ytr[idx], label_smoothing=params["label_smoothing"]) for head, x in zip(heads, xs_train))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        heads.eval()
        with torch.no_grad():
            last = [(_head_acc(h, xte, yte), epoch + 1, _head_acc(h, xtr, ytr)) for h, xtr, xte in zip(heads, xs_train, xs_test)]
        best = [max(b, cur, key=lambda r: r[0]) for b, cur in zip(best, last)]
    chosen = best if params["report"] == "best_test" else last
    return [{"train_acc": tr, "test_acc": te, "epoch": ep, "n_iter": params["epochs"], "converged": True} for te, ep, tr in chosen]


def _head_acc(head, x, y) -> float:
    return float((head(x).argmax(1) == y).float().mean())


# ---------------------------------------------------------------- the probe job


def layer_files(embed_dir: str | Path) -> list[Path]:
    files = sorted(Path(embed_dir).glob("layer_*.parquet"))
    if not files:
        raise FileNotFoundError(f"{embed_dir}: no layer_*.parquet embedding files")
    return files


def probe_layers(embed_dir: str, params: dict, family: str = "cnn", threads: int | None = None) -> pd.DataFrame:
    """Probe every layer of one (cell, eval set): one row per layer. ``threads`` caps torch's
    CPU threads (the job's share of the cores; torch's default takes them all)."""
    if threads:
        torch.set_num_threads(threads)
    front = {k: params[k] for k in CELL_KEYS}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    metas, data = [], []
    for path in layer_files(Path(embed_dir) / params["pooling"]):
        meta, x, y, split = read_embeddings(path)
        train, test = split == "train", split == "test"
        metas.append((meta, int(train.sum()), int(test.sum())))
        data.append((x[train], y[train], x[test], y[test]))
    n_classes = int(metas[0][0]["num_classes"])
    started = time.perf_counter()
    if params["solver"] == "paper":
        results = fit_paper_probes([(d[0], d[2]) for d in data], data[0][1], data[0][3], n_classes, params["paper"], family, device)
    else:
        results = []
        for x_train, y_train, x_test, y_test in tqdm(data, desc=f"probe {params['eval_set']}", leave=False):
            if params["solver"] == "lbfgs":
                results.append(fit_lbfgs_probe(x_train, y_train, x_test, y_test, n_classes, params, device))
            else:
                results.append(fit_sklearn_probe(x_train, y_train, x_test, y_test, params["C"], params["max_iter"], params["standardize"]))
    rows = []
    for (meta, n_train, n_test), result in zip(metas, results):
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
    return pd.DataFrame(rows)
