"""Figures: tunnel curves per cell and an overview over the grid (one panel per backbone)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .io import atomic_path  # noqa: E402
from .metrics import normalise  # noqa: E402
from .seeds import BACKBONE, CONFIDENCE, seed_summary  # noqa: E402

ID_COLOUR = "black"


def _style():
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)


def _curves(probes: pd.DataFrame):
    """(layers, ID curve, {ood_set: curve}) from one cell's probe rows."""
    probes = probes.sort_values(["eval_set", "layer"])
    id_rows = probes[probes.role == "id"]
    layers = id_rows.layer.to_numpy()
    ood = {name: g.test_acc.to_numpy() for name, g in probes[probes.role == "ood"].groupby("eval_set", sort=True)}
    return layers, id_rows.test_acc.to_numpy(), ood, id_rows.eval_set.iloc[0]


def draw_normalised(ax, probes: pd.DataFrame, legend: bool = True, confidence: float = CONFIDENCE):
    """The paper's Figure 1 view of one backbone: normalised ID curve, mean of the normalised OOD
    curves and a star at its peak. One seed: the OOD mean is shaded ±1 SD over the OOD sets.
    Several seeds: every line is the mean over seeds of that seed's curve, shaded with its
    t-interval across seeds (the per-layer values are in ``aggregate/curves_seeds``)."""
    seeds = sorted(probes.seed.unique()) if "seed" in probes.columns else []
    per_seed = []
    for seed, part in probes.groupby("seed", sort=True) if seeds else [(None, probes)]:
        layers, id_curve, ood, id_name = _curves(part)
        row = {"seed": seed, "layer": layers, "id": normalise(id_curve)}
        if ood:
            stack = np.stack([normalise(c) for c in ood.values()])
            row |= {"ood": stack.mean(0), "ood_sd": stack.std(0)}
        per_seed.append(pd.DataFrame(row))
    if len(seeds) > 1:
        lines = seed_summary(pd.concat(per_seed), ["layer"], ["id", "ood"] if ood else ["id"], confidence)
        shade = f"{confidence:.0%} CI over {len(seeds)} seeds"
    else:
        lines = per_seed[0].assign(id_ci_low=np.nan, id_ci_high=np.nan)
        if ood:
            lines = lines.assign(ood_ci_low=lines.ood - lines.ood_sd, ood_ci_high=lines.ood + lines.ood_sd)
        shade = ""
    layers = lines.layer.to_numpy()
    draw_band(ax, layers, lines, "id", ID_COLOUR, f"ID ({id_name})", alpha=0.12)
    if ood:
        draw_band(ax, layers, lines, "ood", "tab:red", f"OOD mean of {len(ood)}" + (f" ({shade})" if shade else ""))
        best = int(np.argmax(lines.ood.to_numpy()))
        ax.plot(layers[best], lines.ood.iloc[best], marker="*", ms=14, color="gold", mec="black", zorder=5, label="OOD best layer")
    ax.set_xlabel("probed layer (index)")
    ax.set_ylabel("accuracy / curve max")
    ax.set_ylim(0, 1.05)
    if legend:
        ax.legend(loc="lower left", fontsize="small")


def draw_band(ax, x, frame: pd.DataFrame, column: str, colour, label: str, alpha: float = 0.2):
    """A line of ``frame[column]`` over ``x`` and, where ``COLUMN_ci_low`` / ``COLUMN_ci_high``
    are finite (a ``seeds.seed_summary``), a shaded band between them. On a log axis a band that
    reaches 0 is cut at a tenth of the line's smallest positive value."""
    mean = frame[column].to_numpy(dtype=float)
    ax.plot(x, mean, color=colour, marker="o", ms=3, label=label)
    low, high = (frame.get(f"{column}_{bound}", pd.Series(np.nan, index=frame.index)).to_numpy(dtype=float) for bound in ("ci_low", "ci_high"))
    if np.isfinite(low).any():
        if ax.get_yscale() == "log" and (mean > 0).any():
            low = np.maximum(low, mean[mean > 0].min() / 10)
        ax.fill_between(x, low, high, color=colour, alpha=alpha, lw=0)


def cell_figure(probes: pd.DataFrame, title: str, png: str, pdf: str) -> None:
    """Left: probe test accuracy per eval set. Right: normalised curves with the OOD star."""
    _style()
    layers, id_curve, ood, id_name = _curves(probes)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(layers, 100 * id_curve, color=ID_COLOUR, lw=2, marker="o", ms=3, label=f"{id_name} (ID)")
    palette = sns.color_palette("colorblind", max(1, len(ood)))
    for colour, (name, curve) in zip(palette, ood.items()):
        left.plot(layers, 100 * curve, color=colour, marker="o", ms=3, label=f"{name} (OOD)")
    left.set_xlabel("probed layer (index)")
    left.set_ylabel("linear probe test accuracy (%)")
    left.set_title("probe accuracy per eval set")
    left.legend(loc="best", fontsize="small")
    draw_normalised(right, probes)
    right.set_title("normalised curves (mean ± SD over OOD sets)")
    for ax in (left, right):
        ax.set_xticks(layers)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, png, pdf)


def overview_figure(curves: pd.DataFrame, png: str, pdf: str, confidence: float = CONFIDENCE) -> None:
    """One normalised-curve panel per backbone (its seeds folded into means and intervals),
    laid out in a grid."""
    _style()
    backbones = list(curves.groupby(BACKBONE, sort=True))
    ncols = min(4, len(backbones))
    nrows = math.ceil(len(backbones) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False, sharey=True)
    for ax, ((arch, id_set, res, aug), probes) in zip(axes.flat, backbones):
        draw_normalised(ax, probes, legend=ax is axes.flat[0], confidence=confidence)
        seeds = sorted(probes.seed.unique())
        runs = f"{len(seeds)} seeds" if len(seeds) > 1 else f"s{seeds[0]}"
        ax.set_title(f"{arch} {id_set} {res}px aug={aug} {runs}", fontsize="small")
    for ax in list(axes.flat)[len(backbones):]:
        ax.set_visible(False)
    fig.tight_layout()
    _save(fig, png, pdf)


def _save(fig, png: str, pdf: str) -> None:
    for path, kwargs in ((png, {"dpi": 150}), (pdf, {})):
        suffix = "." + path.rsplit(".", 1)[-1]
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix[1:], bbox_inches="tight", **kwargs)
    plt.close(fig)
