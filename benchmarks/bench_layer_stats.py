"""Layer statistics: exact numerical rank and NC1 against the projected rank and D x D pseudo-inverse.

Before (the code up to session 12, kept here as the reference): rank from the covariance of a
Gaussian random projection to n dims when d > n; NC1 through numpy's pinv of the d x d Sigma_B.
After: tunnelscope.metrics.layer_stats (exact rank from the smaller Gram matrix's eigenvalues,
NC1 from the SVD of the C x d class means). CPU seconds are this process's user + sys time.
"""

import resource
import time

import numpy as np

from common import parser, report
from tunnelscope.metrics import layer_stats as after


def rank_before(x: np.ndarray, rel_tol: float = 1e-3) -> int:
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if d > n:
        x = x @ (np.random.default_rng(0).standard_normal((d, n)) / np.sqrt(n))
    x = x - x.mean(0)
    s = np.linalg.svd(x.T @ x / max(1, n - 1), compute_uv=False)
    return int((s > rel_tol * s[0]).sum())


def nc1_before(x: np.ndarray, labels: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(0) for c in classes])
    within = x - means[np.searchsorted(classes, labels)]
    centred = means - x.mean(0)
    sigma_w, sigma_b = within.T @ within / len(x), centred.T @ centred / len(classes)
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, hermitian=True)) / len(classes))


def layer_before(x, labels, last):
    return rank_before(x), after.rankme(x), nc1_before(x, labels), after.linear_cka(x, last)


def layer_after(x, labels, last):
    return after.layer_stats({1: x, 2: last}, labels)[0]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, *args) -> tuple[float, float, object]:
    cpu, wall = cpu_seconds(), time.perf_counter()
    value = fn(*args)
    return cpu_seconds() - cpu, time.perf_counter() - wall, value


def planted_layer(n: int, d: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 rows: class means plus noise with a spectrum falling over three decades."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, n)
    basis = rng.standard_normal((300, d)).astype(np.float32)
    noise = (rng.standard_normal((n, 300)) * np.geomspace(1, 1e-3, 300)).astype(np.float32) @ basis
    return rng.standard_normal((classes, d)).astype(np.float32)[labels] * 0.3 + noise, labels


def main():
    p = parser(__doc__)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--dims", type=int, default=2048)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.smoke:
        args.rows, args.dims, args.classes, args.repeats = 60, 80, 5, 1
    x, labels = planted_layer(args.rows, args.dims, args.classes)
    last = x[:, : args.dims // 2]
    cases = {
        "numerical rank": (rank_before, after.numerical_rank, (x,)),
        "NC1": (nc1_before, after.nc1, (x, labels)),
        "whole layer (rank, RankMe, NC1, CKA)": (layer_before, layer_after, (x, labels, last)),
    }
    lines = [
        f"{args.rows} x {args.dims} float32 layer, {args.classes} planted classes; before and after alternate, "
        f"best of {args.repeats}; CPU s = user + sys of this process",
        "",
        "| statistic | before CPU s | after CPU s | before wall s | after wall s | before value | after value |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (before_fn, after_fn, inputs) in cases.items():
        runs = {"before": [], "after": []}
        for _ in range(args.repeats):
            runs["before"].append(timed(before_fn, *inputs))
            runs["after"].append(timed(after_fn, *inputs))
        best = {side: min(r, key=lambda t: t[0]) for side, r in runs.items()}
        values = [_short(best[side][2]) for side in ("before", "after")]
        lines.append(
            f"| {name} | {best['before'][0]:.2f} | {best['after'][0]:.2f} | {best['before'][1]:.2f} | "
            f"{best['after'][1]:.2f} | {values[0]} | {values[1]} |"
        )
    report("Layer statistics: exact rank and NC1 against the projection and the d x d pinv", lines, args)


def _short(value) -> str:
    if isinstance(value, dict):
        return f"rank {value['numerical_rank']}, NC1 {value['nc1']:.4g}"
    if isinstance(value, tuple):
        return f"rank {value[0]}, NC1 {value[2]:.4g}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
