"""Figures: tunnel curves per cell and an overview over the grid."""

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


def draw_normalised(ax, probes: pd.DataFrame, legend: bool = True):
    """The paper's Figure 1 view: normalised ID curve, mean +- SD of normalised OOD curves, star."""
    layers, id_curve, ood, id_name = _curves(probes)
    ax.plot(layers, normalise(id_curve), color=ID_COLOUR, marker="o", ms=3, label=f"ID ({id_name})")
    if ood:
        stack = np.stack([normalise(c) for c in ood.values()])
        mean, sd = stack.mean(0), stack.std(0)
        ax.plot(layers, mean, color="tab:red", marker="o", ms=3, label=f"OOD mean of {len(ood)}")
        ax.fill_between(layers, mean - sd, mean + sd, color="tab:red", alpha=0.2, lw=0)
        best = int(np.argmax(mean))
        ax.plot(layers[best], mean[best], marker="*", ms=14, color="gold", mec="black", zorder=5, label="OOD best layer")
    ax.set_xlabel("probed layer (index)")
    ax.set_ylabel("accuracy / curve max")
    ax.set_ylim(0, 1.05)
    if legend:
        ax.legend(loc="lower left", fontsize="small")


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


def overview_figure(curves: pd.DataFrame, png: str, pdf: str) -> None:
    """One normalised-curve panel per cell, laid out in a grid."""
    _style()
    cells = list(curves.groupby(["arch", "id_dataset", "resolution", "augmentation", "seed"], sort=True))
    ncols = min(4, len(cells))
    nrows = math.ceil(len(cells) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False, sharey=True)
    for ax, ((arch, id_set, res, aug, seed), probes) in zip(axes.flat, cells):
        draw_normalised(ax, probes, legend=ax is axes.flat[0])
        ax.set_title(f"{arch} {id_set} {res}px aug={aug} s{seed}", fontsize="small")
    for ax in list(axes.flat)[len(cells):]:
        ax.set_visible(False)
    fig.tight_layout()
    _save(fig, png, pdf)


def _save(fig, png: str, pdf: str) -> None:
    for path, kwargs in ((png, {"dpi": 150}), (pdf, {})):
        suffix = "." + path.rsplit(".", 1)[-1]
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix[1:], bbox_inches="tight", **kwargs)
    plt.close(fig)
