"""The ``lbfgs`` solver: full-batch L-BFGS in torch on standardised features.

The L2 strength is chosen on a seeded, stratified validation split of the probe's training data
(never on the test split), walking the grid from strong to weak with warm starts, then refit on
all training data. Written on torch rather than scikit-learn so it runs in float32 or bfloat16
(``probe.precision``) on the job's device and reuses each fit as the next one's starting point.
Config keys: ``registry.SOLVERS["lbfgs"]``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tunnelscope.data.splits import stratified_split
from tunnelscope.probe.failure import ProbeFailure, all_finite, failed_result, nonfinite_count
from tunnelscope.runtime import native_bf16

# Largest feature dim that gets the eigenbasis preconditioner. Its set-up (second-moment matrix,
# ~d / 2C L-BFGS iterations' worth, and eigh, d^3) paid off up to 512 dims (CIFAR-10 VGGm layer 7:
# 57 instead of 91 steps) but not above: on real 1,024 / 2,048-dim features the fits took as many
# or more steps with it, after 0.2 / 1.0 s of set-up (benchmarks/RESULTS.md, session 3).
MAX_ROTATED_DIM = 512
_MATMUL_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Relative loss decrease below which a step is indistinguishable from evaluation noise: in float32
# only no decrease at all; bfloat16 products move loss differences by 2e-5 to 1e-4 of the loss
# (measured between nearby weights on the CIFAR-10 VGGm layers), so steps are stopped below 1e-5.
_LOSS_RESOLUTION = {torch.float32: 0.0, torch.bfloat16: 1e-5}
# Standard deviations are clamped here; a channel below it is dead (constant on the training rows).
_MIN_STD = 1e-6


def matmul_precision(requested: str, device: str | torch.device = "cpu") -> str:
    """Resolve ``probe.precision``: ``auto`` is bf16 where bfloat16 products run natively
    (``native_bf16``), fp32 elsewhere, where bf16 is emulated and slow."""
    if requested != "auto":
        return requested
    return "bf16" if native_bf16(device) else "fp32"


def prepare_features(
    x: torch.Tensor, standardize: bool, dtype: torch.dtype = torch.float32, notes: list[str] | None = None
):
    """Training features as the solver wants them: centred and scaled to unit variance
    (population std, as StandardScaler) when ``standardize``, cast to the product ``dtype``,
    with the preconditioner's basis (eigenvalues >= 0, eigenvectors) of their second-moment
    matrix, or None above MAX_ROTATED_DIM. Returns (features, mean, std, basis); a fallback the
    basis needed (``eigenbasis``) is appended to ``notes``.

    The variances are read off the diagonal of the second-moment matrix of the centred data and
    the scaling is applied to that matrix, so the data is centred, multiplied and cast once
    (x.std alone costs 40% of the d = 512 matrix product here). The matrix is float32: bfloat16
    rounding of it would misplace the small eigenvalues.
    """
    n, d = x.shape
    mean = x.mean(0) if standardize else torch.zeros(d, device=x.device)
    std = torch.ones(d, device=x.device)
    centred = x - mean if standardize else x
    moments = centred.t() @ centred / n if d <= MAX_ROTATED_DIM else None
    if standardize:  # population variances, off the moments' diagonal where they are computed
        variance = moments.diagonal() if moments is not None else centred.pow(2).mean(0)
        std = variance.sqrt().clamp_min(_MIN_STD)
    basis = None
    if moments is not None:
        basis, note = eigenbasis(moments / std[:, None] / std, dead=moments.diagonal() < _MIN_STD**2)
        if note and notes is not None:
            notes.append(note)
    features = centred.mul_(std.reciprocal()) if standardize else centred  # centred is our own copy
    return features.to(dtype), mean, std, basis


def _eigh(matrix: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, str]:
    """((eigenvalues, eigenvectors), "") of a symmetric matrix, or (None, what went wrong)."""
    try:
        eigenvalues, axes = torch.linalg.eigh(matrix)
    except torch.linalg.LinAlgError:
        return None, "did not converge"
    if not (all_finite(eigenvalues) and all_finite(axes)):
        return None, "returned values that are not finite"
    return (eigenvalues, axes), ""


def eigenbasis(matrix: torch.Tensor, dead: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, str]:
    """The preconditioner's basis (eigenvalues clamped at 0, eigenvectors) of a second-moment
    ``matrix``, or None, and "" or the fallback it took.

    float32 eigh of a matrix with many ``dead`` channels (zero rows and columns: a repeated zero
    eigenvalue) can fail to converge or, in LAPACK builds seen on one thread, return NaN. Then
    the live channels' block is decomposed in float64 and each dead channel keeps its own axis;
    if that fails too, no preconditioner. Any orthonormal basis gives the same optimum (the
    change of variables is invertible), so a fallback changes the steps taken, not the answer.
    """
    found, problem = _eigh(matrix)
    if found is not None:
        eigenvalues, axes = found
        return (eigenvalues.clamp_min(0), axes), ""
    d, live = len(matrix), (~dead).nonzero().squeeze(1)
    first = f"{str(matrix.dtype).removeprefix('torch.')} eigh of the {d}x{d} moment matrix {problem}"
    block, problem = _eigh(matrix[live][:, live].double())
    if block is None:
        return None, f"{first}; float64 eigh of its live channels {problem} too: no preconditioner"
    eigenvalues = matrix.diagonal().double().clone()  # a dead channel's own second moment
    axes = torch.eye(d, dtype=torch.float64, device=matrix.device)
    eigenvalues[live], axes[live[:, None], live] = block
    basis = (eigenvalues.clamp_min(0).to(matrix.dtype), axes.to(matrix.dtype))
    return (
        basis,
        f"{first}; float64 eigh of its {len(live)} live channels used ({d - len(live)} dead on their own axes)",
    )


def _lbfgs_direction(g: torch.Tensor, pairs: list) -> torch.Tensor:
    """-H g by the two-loop recursion over the (s, y, 1 / s'y) pairs, oldest first; with no pairs
    the gradient step is scaled to at most unit length in l1 (as torch.optim.LBFGS starts)."""
    if not pairs:
        return g * -min(1.0, 1.0 / float(g.abs().sum()))
    q, alphas = g.clone(), []
    for s, y, rho in reversed(pairs):
        alphas.append(rho * torch.dot(s, q))
        q.sub_(y * alphas[-1])
    _, y, rho = pairs[-1]
    q.mul_(1.0 / (rho * torch.dot(y, y)))
    for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
        q.add_(s * (alpha - rho * torch.dot(y, q)))
    return q.neg_()


def minimize_lbfgs(
    fg, u: torch.Tensor, max_iter: int, tol: float, ftol: float = 0.0, history: int = 10, max_evals: int = 10
):
    """L-BFGS with a backtracking Armijo line search on a flat ``u``; ``fg(u)`` returns
    (loss as a float, gradient).

    Returns (u, iterations, converged); converged means it stopped before ``max_iter``: the
    largest gradient entry fell to ``tol``, or the loss stopped falling after at least one step
    (a step lowered it by at most ``ftol`` |loss|, or ``max_evals`` trial steps found no
    acceptable one): the floor set by the precision of the evaluations. A line search that finds
    no step from the start is not convergence. Raises ProbeFailure when the loss or gradient at
    the current point, or the loss at every trial step, is not finite (NaN never passes Armijo,
    so without this check such a search would end as if converged).

    Written here rather than using torch.optim.LBFGS, which costs 1.4 s per process (its
    constructor imports torch._dynamo), ~1 ms of Python per iteration and 1.3-1.7 evaluations
    per iteration in its strong-Wolfe search; a unit step that passes Armijo is taken at once, so
    this needs about one evaluation per iteration on these convex problems (updates with
    s'y <= 0 are skipped; the test is relative to |s| |y|, so progress does not stall on
    objectives of small scale as with torch's absolute 1e-10).
    """
    f, g = fg(u)
    pairs: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    for it in range(max_iter):
        if _largest(f, g, it) <= tol:
            return u, it, True
        direction = _lbfgs_direction(g, pairs)
        slope = float(torch.dot(g, direction))
        if slope >= 0:  # numerically not a descent direction: restart from the gradient
            pairs = []
            direction = _lbfgs_direction(g, pairs)
            slope = float(torch.dot(g, direction))
        step, finite_trial = 1.0, False
        for _ in range(max_evals):
            f_new, g_new = fg(u + step * direction)
            finite_trial = finite_trial or math.isfinite(f_new)
            slope_new = float(torch.dot(g_new, direction))
            # Armijo; or, where the decrease is below the loss's resolution, the curvature
            # condition alone: the directional derivative still resolves progress there.
            if f_new <= f + 1e-4 * step * slope or (f_new <= f + 1e-6 * abs(f) and abs(slope_new) <= 0.9 * -slope):
                break
            # overshoot: the secant root of the directional derivative; else halve
            step *= min(0.5, max(0.1, slope / (slope - slope_new))) if slope_new > 0 else 0.5
        else:
            if not finite_trial:
                raise ProbeFailure(f"loss not finite at all {max_evals} trial steps of L-BFGS iteration {it}")
            return u, it, it > 0
        s, y = step * direction, g_new - g
        sy = float(torch.dot(s, y))
        if sy > 1e-10 * float(torch.linalg.vector_norm(s) * torch.linalg.vector_norm(y)):  # scale-free
            pairs = [*pairs[-(history - 1) :], (s, y, 1.0 / sy)]
        decrease = f - f_new
        u, f, g = u + s, f_new, g_new
        if decrease <= ftol * abs(f):
            return u, it + 1, True
    return u, max_iter, _largest(f, g, max_iter) <= tol


def _largest(f: float, g: torch.Tensor, it: int) -> float:
    """The largest gradient entry; ProbeFailure where it or the loss is not finite (both are
    read back to the host anyway, so the check costs nothing)."""
    largest = float(g.abs().max())
    for name, value in (("loss", f), ("gradient", largest)):
        if not math.isfinite(value):
            raise ProbeFailure(f"{name} not finite at L-BFGS iteration {it}")
    return largest


def fit_softmax(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    l2: float,
    init: torch.Tensor | None = None,
    max_iter: int = 200,
    tol: float = 1e-4,
    basis: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """Minimise mean cross-entropy + l2/2 ||W||^2 (bias unpenalised) by L-BFGS.

    Returns (weights (d+1, C) with the bias as last row, iterations, converged). Equivalent to
    scikit-learn's LogisticRegression with C = 1 / (l2 * n). The gradient is written out
    (X^T (P - Y) / n) rather than taken by autograd, so each evaluation reads X exactly twice.
    Weights and logits are held class-major ((C, d), (C, n)): for 10 classes the products in that
    layout and the softmax over a contiguous leading axis are 2-10x faster on CPU than their
    (d, C) / row-wise counterparts. A bfloat16 ``x`` runs both data products in bfloat16
    (float32 accumulation); weights, softmax and loss stay float32.

    ``basis`` = (eigenvalues, axes) of x's second-moment matrix (``prepare_features``) turns on
    preconditioning: L-BFGS runs on u with W = axes (scale * u), scale_j = (eigenvalue_j / C +
    l2)^-1/2, where the Gauss-Newton Hessian is close to the identity, so it needs several times
    fewer steps on correlated features. The change of variables acts on the weights, not on the
    data. ``tol`` bounds the largest gradient entry in those coordinates.
    """
    n, d = x.shape
    device, dtype = x.device, x.dtype
    rows = torch.arange(n, device=device)
    axes, scale = None, torch.ones(d, device=device)
    if basis is not None:
        eigenvalues, axes = basis
        scale = (eigenvalues / n_classes + l2).rsqrt()

    def to_weights(flat):  # flat u, (C, d + 1) -> class-major weights (C, d) and bias (C,)
        u = flat.view(n_classes, d + 1)
        w = u[:, :-1] * scale
        return (w if axes is None else w @ axes.t()), u[:, -1]

    @torch.no_grad()
    def loss_and_grad(flat):
        w, b = to_weights(flat)
        logits = (
            torch.mm(x, w.to(dtype).t()).t().to(torch.float32, memory_format=torch.contiguous_format).add_(b[:, None])
        )
        log_p = torch.log_softmax(logits, dim=0)
        loss = -log_p[y, rows].sum() / n + 0.5 * l2 * w.pow(2).sum()
        residual = log_p.exp_()
        residual[y, rows] -= 1.0  # P - Y, class-major
        grad_w = torch.mm(residual.to(dtype), x).float().div_(n).add_(w, alpha=l2)
        grad = torch.empty(n_classes, d + 1, device=device)
        grad[:, :-1] = (grad_w if axes is None else grad_w @ axes) * scale
        grad[:, -1] = residual.sum(1) / n
        return float(loss), grad.view(-1)

    u = torch.zeros(n_classes, d + 1, device=device)
    if init is not None:
        u[:, :-1] = (init[:-1].t() if axes is None else init[:-1].t() @ axes) / scale
        u[:, -1] = init[-1]
    u, n_iter, converged = minimize_lbfgs(loss_and_grad, u.view(-1), max_iter, tol, _LOSS_RESOLUTION[dtype])
    w, b = to_weights(u)
    return torch.cat([w, b[:, None]], 1).t().contiguous(), n_iter, converged


def _predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.addmm(w[-1], x, w[:-1]).argmax(1)


def _accuracy(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((_predict(w, x) == y).float().mean()) if len(y) else float("nan")


def _unstandardise(w: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Weights on standardised features -> the same classifier on raw features."""
    raw = w[:-1] / std[:, None]
    return torch.cat([raw, (w[-1] - mean @ raw)[None]])


def fit_lbfgs_probe(x_train, y_train, x_test, y_test, n_classes: int, settings: dict, device="cpu") -> dict:
    """Choose the L2 strength on a validation split, refit on all training data, score test.

    ``val_acc`` is the validation accuracy of the chosen L2 (fitted on the rest of the training
    split, before the refit): the best of the grid, so slightly optimistic, but it never saw a
    test row. ``test_pred`` holds the class predicted for each test row, in order; ``test_acc``
    is computed from it.

    Standardisation is folded into the weights at the end, so only the training rows are ever
    transformed; test rows are scored as they are.

    A fit that fails with the preconditioner (ProbeFailure: something not finite) is redone
    without it; ``fallback`` names what was needed. If that fails too, the result is a failed one
    (probe/failure.py): ``converged`` false, ``failure`` the reason, NaN accuracies."""
    x_raw = torch.as_tensor(x_train, dtype=torch.float32, device=device)  # left as is by prepare_features
    ytr = torch.as_tensor(y_train, dtype=torch.long, device=device)
    precision = matmul_precision(settings["precision"], device)
    notes: list[str] = []
    xtr, mean, std, basis = prepare_features(x_raw, settings["standardize"], _MATMUL_DTYPE[precision], notes)
    facts = {"precision": precision, "device_type": x_raw.device.type}
    for attempt in [basis, None] if basis is not None else [None]:
        try:
            l2, val_acc, w, n_iter, converged = _select_and_refit(xtr, ytr, y_train, n_classes, settings, attempt)
            w = _unstandardise(w, mean, std)
            if not all_finite(w):
                raise ProbeFailure(f"{nonfinite_count(w)} weights not finite")
            break
        except ProbeFailure as failure:
            if attempt is None:
                reason = f"{failure}" + (" (also with the preconditioner)" if basis is not None else "")
                facts |= {"val_acc": float("nan"), "l2": float("nan"), "fallback": "; ".join(notes)}
                return failed_result(reason, x_raw.shape[1], n_classes, len(y_test), **facts)
            notes.append(f"{failure} with the preconditioner: fitted without it")
    xte = torch.as_tensor(x_test, dtype=torch.float32, device=device)
    yte = torch.as_tensor(y_test, dtype=torch.long, device=device)
    test_pred = _predict(w, xte)
    return {
        "train_acc": _accuracy(w, x_raw, ytr),
        "test_acc": float((test_pred == yte).double().mean()) if len(yte) else float("nan"),
        "test_pred": test_pred.cpu().numpy(),
        "val_acc": val_acc,
        "l2": l2,
        "n_iter": n_iter,
        "converged": converged,
        "failure": "",
        "fallback": "; ".join(notes),
        **facts,
        "weights": w.cpu().numpy(),
    }


def _select_and_refit(xtr, ytr, y_train, n_classes: int, settings: dict, basis):
    """(chosen l2, its validation accuracy, weights refitted on all training rows, iterations,
    converged): the grid walked from strong to weak L2, each fit warm-starting the next."""
    fit_idx, val_idx = stratified_split(
        np.asarray(y_train), settings["val_fraction"], settings["probe_seed"], stream=2718
    )
    fit_idx, val_idx = torch.as_tensor(fit_idx, device=xtr.device), torch.as_tensor(val_idx, device=xtr.device)
    x_fit, y_fit, x_val, y_val = xtr[fit_idx], ytr[fit_idx], xtr[val_idx].float(), ytr[val_idx]
    best, w = None, None
    for l2 in sorted(settings["l2_grid"], reverse=True):
        w, _, _ = fit_softmax(x_fit, y_fit, n_classes, l2, w, settings["select_max_iter"], settings["tol"], basis)
        acc = _accuracy(w, x_val, y_val)
        if best is None or acc > best[1]:
            best = (l2, acc, w)
    l2, val_acc, w0 = best
    w, n_iter, converged = fit_softmax(xtr, ytr, n_classes, l2, w0, settings["max_iter"], settings["tol"], basis)
    return l2, val_acc, w, n_iter, converged


def fit_layer(x_train, y_train, x_test, y_test, n_classes: int, settings: dict, device) -> dict:
    """One layer's probe as the probe job calls it (probe.job.SolverFit)."""
    return fit_lbfgs_probe(x_train, y_train, x_test, y_test, n_classes, settings, device)
