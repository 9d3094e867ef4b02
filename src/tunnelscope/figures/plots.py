"""Figures: tunnel curves per cell and an overview over the grid (one panel per backbone)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tunnelscope.figures.style import (
    ID_COLOUR,
    apply_style,
    fit_suptitle,
    fit_title,
    integer_axis,
    panel_grid,
    plt,
    save_figure,
    sns,
)
from tunnelscope.metrics.paired import accuracy_interval
from tunnelscope.metrics.seeds import BACKBONE_VARIABLES, CONFIDENCE, seed_summary
from tunnelscope.metrics.tunnel import normalise
from tunnelscope.registry import CELL_VARIABLES


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
        ax.plot(
            layers[best],
            lines.ood.iloc[best],
            marker="*",
            ms=14,
            color="gold",
            mec="black",
            zorder=5,
            label="OOD best layer",
        )
    ax.set_xlabel("probed layer (index)")
    integer_axis(ax.xaxis)
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
    low, high = (
        frame.get(f"{column}_{bound}", pd.Series(np.nan, index=frame.index)).to_numpy(dtype=float)
        for bound in ("ci_low", "ci_high")
    )
    if np.isfinite(low).any():
        if ax.get_yscale() == "log" and (mean > 0).any():
            low = np.maximum(low, mean[mean > 0].min() / 10)
        ax.fill_between(x, low, high, color=colour, alpha=alpha, lw=0)


# Module names on a layer axis: rotated labels of this size, each one line tall, and at most
# this many characters (the layer index stays in front of each).
NAME_POINTS, NAME_CHARS = 6.5, 22


def layer_axis(ax, layers, names, width_inches: float) -> None:
    """Ticks at every layer labelled "index name" where one rotated line per layer fits the
    panel's ``width_inches``; else whole-number indices only."""
    if len(layers) * NAME_POINTS * 1.3 > 0.85 * 72 * width_inches:
        ax.set_xlabel("probed layer (index)")
        integer_axis(ax.xaxis)
        return
    short = [n if len(n) <= NAME_CHARS else "…" + n[-(NAME_CHARS - 1) :] for n in map(str, names)]
    ax.set_xticks(list(layers), [f"{i} {n}" for i, n in zip(layers, short)], rotation=90, fontsize=NAME_POINTS)
    ax.set_xlabel("probed layer (index, module)")


def cell_figure(probes: pd.DataFrame, title: str, png: str, pdf: str, confidence: float = 0.95) -> None:
    """Left: probe test accuracy per eval set with its Wilson interval over the test images
    (``confidence``), chance level (1 / classes) of each set, module names on the layer axis
    where they fit. Right: normalised curves with the OOD star."""
    apply_style()
    layers, id_curve, ood, id_name = _curves(probes)
    names = probes[probes.role == "id"].sort_values("layer").layer_name.to_numpy()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8 + (0.9 if len(layers) <= 40 else 0)))
    palette = [ID_COLOUR, *sns.color_palette("colorblind", max(1, len(ood)))]
    sets = [(id_name, "ID"), *((name, "OOD") for name in ood)]
    for colour, (name, role) in zip(palette, sets):
        rows = probes[probes.eval_set == name].sort_values("layer")
        acc, n = rows.test_acc.to_numpy(), rows.n_test.to_numpy()
        bounds = np.array([accuracy_interval(round(a * k), k, confidence) for a, k in zip(acc, n)])
        left.plot(
            layers, 100 * acc, color=colour, lw=2 if role == "ID" else 1.2, marker="o", ms=3, label=f"{name} ({role})"
        )
        left.fill_between(layers, 100 * bounds[:, 0], 100 * bounds[:, 1], color=colour, alpha=0.15, lw=0)
        left.axhline(100 / int(rows.n_classes.iloc[0]), color=colour, lw=0.8, ls=":")
    left.plot([], [], color="grey", lw=0.8, ls=":", label="chance (1 / classes), per set")
    left.set_ylabel("linear probe test accuracy (%)")
    left.set_title(f"probe accuracy per eval set ({confidence:.0%} Wilson interval)")
    left.legend(loc="best", fontsize="x-small")
    draw_normalised(right, probes)
    right.set_title("normalised curves (mean ± SD over OOD sets)")
    layer_axis(left, layers, names, 5.0)
    fit_suptitle(fig, title)
    fig.tight_layout()
    save_figure(fig, png, pdf)


def overview_figure(curves: pd.DataFrame, png: str, pdf: str, confidence: float = CONFIDENCE) -> None:
    """One normalised-curve panel per backbone (its seeds folded into means and intervals),
    laid out in a grid."""
    apply_style()
    backbones = list(curves.groupby(BACKBONE_VARIABLES, sort=True))
    ncols = min(4, len(backbones))
    nrows = math.ceil(len(backbones) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False, sharey=True)
    for ax, ((arch, id_set, res, aug), probes) in zip(axes.flat, backbones):
        draw_normalised(ax, probes, legend=ax is axes.flat[0], confidence=confidence)
        seeds = sorted(probes.seed.unique())
        runs = f"{len(seeds)} seeds" if len(seeds) > 1 else f"s{seeds[0]}"
        fit_title(ax, f"{arch} {id_set} {res}px aug={aug} {runs}", fontsize="small")
    for ax in list(axes.flat)[len(backbones) :]:
        ax.set_visible(False)
    fig.tight_layout()
    save_figure(fig, png, pdf)


def zero_shot_figure(
    layers: pd.DataFrame, summary: pd.DataFrame, png: str, pdf: str, by_layer: pd.DataFrame | None = None
) -> None:
    """Per (cell, shifted set), or with several seeds per (backbone, shifted set) as seed means
    with t-interval bands (``by_layer``, protocols.zero_shot_seeds): accuracy per layer on the
    shifted test rows under both protocols, the clean ID curve for reference, and the layer each
    protocol picks (one star per seed)."""
    apply_style()
    keys = [*BACKBONE_VARIABLES, "eval_set"] + ([] if by_layer is not None else ["seed"])
    curves = (by_layer if by_layer is not None else layers).sort_values("layer")
    panels = list(curves.groupby(keys, sort=True))
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 3.2 * nrows), squeeze=False, sharey=True)
    lines = (
        ("clean_test_acc", ID_COLOUR, "ID probe, clean ID test"),
        ("zero_shot_test_acc", "tab:blue", "zero-shot: ID probe on shifted"),
        ("shifted_probe_test_acc", "tab:red", "paper: probe trained on shifted"),
    )
    for ax, (key, group) in zip(axes.flat, panels):
        x = group.layer.to_numpy()
        percent = group.assign(
            **{c: 100 * group[c] for c in group.columns if c.split("_ci_")[0] in {k for k, _, _ in lines}}
        )
        for column, colour, label in lines:
            draw_band(ax, x, percent, column, colour, label)
        picks = summary.merge(pd.DataFrame([dict(zip(keys, key))]), on=keys)
        for protocol, colour, label in (
            ("zero_shot", "tab:blue", "layer chosen on shifted val"),
            ("shifted_probe", "tab:red", "paper's best layer"),
        ):
            layer, acc = picks[f"{protocol}_layer"], 100 * picks[f"{protocol}_acc"]
            ax.plot(layer, acc, ls="", marker="*", ms=13, color=colour, mec="black", zorder=5, label=label)
        row = group.iloc[0]
        seeds = f"{picks.seed.nunique()} seeds" if by_layer is not None else f"s{row.seed}"
        fit_title(
            ax,
            f"{row.arch} {row.id_dataset} {row.resolution}px aug={row.augmentation} {seeds}\n{row.eval_set}",
            fontsize="small",
        )
        ax.set_xlabel("probed layer (index)")
        integer_axis(ax.xaxis)
        ax.set_ylim(0, 102)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy on shifted rows (%)")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize="small", bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.08 if nrows == 1 else 0.05, 1, 1))
    save_figure(fig, png, pdf)


SOLVER_PANELS = {
    "ood_retained": "% OOD retained",
    "pearson": "Pearson ρ (ID vs OOD curve)",
    "alignment": "ID/OOD alignment A",
    "tunnel_start": "tunnel start (layer)",
}


def solver_figure(metrics: pd.DataFrame, reference: str, png: str, pdf: str) -> None:
    """Each metric under every other solver against the reference solver, one point per (cell,
    OOD set); points on the diagonal are protocols that agree."""
    apply_style()
    keys = [*CELL_VARIABLES, "ood_set"]
    ref = metrics[metrics.solver == reference]
    others = [s for s in metrics.solver.unique() if s != reference]
    palette = dict(zip(others, sns.color_palette("colorblind", len(others))))
    fig, axes = panel_grid(len(SOLVER_PANELS), (3.6, 3.6), max_cols=2)
    for ax, (metric, label) in zip(axes, SOLVER_PANELS.items()):
        values = [ref[metric].astype(float)]  # the axes' common range
        for solver in others:
            joined = ref[[*keys, metric]].merge(
                metrics.loc[metrics.solver == solver, [*keys, metric]], on=keys, suffixes=("", "_other")
            )
            ax.scatter(
                joined[metric],
                joined[f"{metric}_other"],
                color=palette[solver],
                s=22,
                alpha=0.8,
                label=solver,
                edgecolor="black",
                lw=0.3,
            )
            values.append(joined[f"{metric}_other"])
        finite = pd.concat(values).dropna()
        if len(finite):
            lo, hi = float(finite.min()), float(finite.max())
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", zorder=0)
        ax.set_xlabel(f"under {reference} (reference)")
        ax.set_ylabel("under the other solver")
        ax.set_title(label, fontsize="medium")
    axes[0].legend(title="solver", fontsize="small", loc="best")
    fig.suptitle(
        f"Tunnel metrics under each probe solver against {reference} (one point per backbone and OOD set)",
        fontsize="medium",
    )
    fig.tight_layout()
    save_figure(fig, png, pdf)


def tsne_figure(
    coords: pd.DataFrame, layer_stats: pd.DataFrame, title: str, png: str, pdf: str, columns: int = 5
) -> None:
    """Left: numerical rank of the ID representation per layer. Right: t-SNE of the same ID test
    images at every probed layer, coloured by class (Harun et al., Fig. 4)."""
    apply_style()
    layers = sorted(coords.layer.unique())
    ncols = min(columns, len(layers))
    nrows = math.ceil(len(layers) / ncols)
    fig = plt.figure(figsize=(3.4 + 2.3 * ncols, 0.4 + 2.3 * nrows))
    grid = fig.add_gridspec(nrows, ncols + 1, width_ratios=[1.6] + [1] * ncols)
    rank = fig.add_subplot(grid[:, 0])
    stats = layer_stats.sort_values("layer")
    rank.plot(stats.layer, stats.numerical_rank, color=ID_COLOUR, marker="o", ms=3)
    rank.set_xlabel("probed layer (index)")
    rank.set_ylabel("numerical rank of ID features")
    rank.set_title("rank per layer", fontsize="medium")
    integer_axis(rank.xaxis)
    integer_axis(rank.yaxis)
    classes = sorted(coords.label.unique())
    palette = dict(zip(classes, sns.color_palette("colorblind", len(classes))))
    # the dataset's class names where the embeddings carry them (older tables: "class N")
    named = coords.drop_duplicates("label").set_index("label").get("class_name")
    names = {c: named[c] if named is not None else f"class {c}" for c in classes}
    for i, layer in enumerate(layers):
        ax = fig.add_subplot(grid[i // ncols, 1 + i % ncols])
        points = coords[coords.layer == layer]
        for label, group in points.groupby("label"):
            ax.scatter(group.x, group.y, s=4, color=palette[label], label=names[label], rasterized=True)
        fit_title(ax, f"layer {layer}: {points.layer_name.iloc[0]}", fontsize="x-small")
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], ls="", marker="o", color=palette[c], label=names[c]) for c in classes]
    fig.legend(handles=handles, loc="lower center", ncol=len(classes), fontsize="small", bbox_to_anchor=(0.6, -0.01))
    fit_suptitle(fig, f"{title}: t-SNE of ID test embeddings per layer ({len(classes)} classes)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_figure(fig, png, pdf)
