"""The best layers (metrics.best_layers) as a readable table and a figure of small multiples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tunnelscope.figures.style import apply_style, fit_title, integer_axis, plt, save_figure
from tunnelscope.metrics.paired import accuracy_interval
from tunnelscope.registry import CELL_VARIABLES


def _backbone(row) -> str:
    label = row.label if isinstance(row.label, str) and row.label else row.arch
    return f"{label} {row.id_dataset} {row.resolution}px aug={row.augmentation} s{row.seed}"


def _percent(acc, low, high) -> str:
    return f"{100 * acc:.1f} [{100 * low:.1f}, {100 * high:.1f}]" if np.isfinite(acc) else "–"


def _layer(layer, name) -> str:
    return f"{int(layer)} ({name})" if pd.notna(layer) else "unavailable"


def _trained(row) -> str:
    """Training health (metrics.health): a backbone that did not learn makes its answer moot."""
    if not hasattr(row, "trained") or row.untrained_reason == "published weights":
        return "not checked (published weights)" if hasattr(row, "trained") else "not checked"
    return "yes" if row.trained else f"NO: {row.untrained_reason}"


def summary_table(best: pd.DataFrame) -> pd.DataFrame:
    """One line per (backbone, OOD set) of ``aggregate/best_layers``: layers by index and module
    name, accuracies in % with their intervals, the gap in percentage points."""
    level = f"{best.confidence.iloc[0]:.0%}" if len(best) else ""
    rows = []
    for row in best.itertuples():
        rows.append(
            {
                "backbone": _backbone(row),
                "OOD set": row.ood_set,
                "best layer": _layer(row.best_layer, row.best_layer_name),
                f"best OOD acc % [{level} CI]": _percent(row.best_acc, row.best_acc_ci_low, row.best_acc_ci_high),
                "indistinguishable layers (McNemar p ≥ α)": row.indistinguishable_layers,
                "validation-chosen layer": _layer(row.val_chosen_layer, row.val_chosen_layer_name),
                f"its OOD acc % [{level} CI]": _percent(
                    row.val_chosen_acc, row.val_chosen_acc_ci_low, row.val_chosen_acc_ci_high
                ),
                f"last layer OOD acc % [{level} CI]": _percent(row.last_acc, row.last_acc_ci_low, row.last_acc_ci_high),
                f"gap best − last, points [{level} CI]": _percent(
                    row.gap_best_last, row.gap_best_last_ci_low, row.gap_best_last_ci_high
                ),
                "McNemar p (last vs best)": f"{row.best_vs_last_p:.2g}",
                f"gap validation-chosen − last, points [{level} CI]": _percent(
                    row.gap_val_chosen_last, row.gap_val_chosen_last_ci_low, row.gap_val_chosen_last_ci_high
                ),
                f"tunnel ({row.tunnel_rule} rule)": _tunnel(row.tunnel),
                "failed probes (layers, left out)": getattr(row, "failed_layers", "") or "none",
                "backbone trained": _trained(row),
            }
        )
    return pd.DataFrame(rows)


def _tunnel(verdict) -> str:
    """yes / no, or undecided where the last layer's probe failed (None)."""
    return "undecided" if verdict is None or pd.isna(verdict) else "yes" if verdict else "no"


def best_layers_figure(best: pd.DataFrame, curves: pd.DataFrame, png: str, pdf: str) -> None:
    """One panel per (backbone, OOD set): OOD probe accuracy per layer with its interval over the
    test images, chance level, the best layer (star), the layers indistinguishable from it
    (filled), and the validation-chosen layer (diamond)."""
    apply_style()
    keys = list(CELL_VARIABLES)
    ncols = min(6, max(1, len(best)))
    nrows = max(1, math.ceil(len(best) / ncols))
    legend_inches = 0.45 if ncols >= 3 else 0.8  # one legend row under wide grids, two under narrow
    height = 2.8 * nrows + legend_inches
    width = max(3.2 * ncols, 6.0)  # room for the legend under one or two panels
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, sharey=True)
    for ax, row in zip(axes.flat, best.itertuples()):
        match = (curves[keys] == pd.Series({k: getattr(row, k) for k in keys})).all(axis=1)
        curve = curves[match & (curves.eval_set == row.ood_set)].sort_values("layer")
        layers, acc, n = curve.layer.to_numpy(), curve.test_acc.to_numpy(), curve.n_test.to_numpy()
        bounds = np.array(
            [
                accuracy_interval(round(a * k), k, row.confidence) if np.isfinite(a) else (np.nan,) * 2
                for a, k in zip(acc, n)
            ]
        )  # a failed probe (NaN) is a gap in the curve
        ax.fill_between(layers, 100 * bounds[:, 0], 100 * bounds[:, 1], color="tab:red", alpha=0.2, lw=0)
        ax.plot(layers, 100 * acc, color="tab:red", lw=1)
        tied = np.isin(layers, [int(v) for v in str(row.indistinguishable_layers).split(",") if v])
        ax.plot(layers[~tied], 100 * acc[~tied], ls="", marker="o", ms=3, mfc="white", color="tab:red")
        ax.plot(layers[tied], 100 * acc[tied], ls="", marker="o", ms=3, color="tab:red")
        ax.axhline(100 * row.chance, color="grey", lw=1, ls=":")
        ax.plot(row.best_layer, 100 * row.best_acc, marker="*", ms=13, color="gold", mec="black", ls="", zorder=5)
        if pd.notna(row.val_chosen_layer):
            ax.plot(
                row.val_chosen_layer,
                100 * row.val_chosen_acc,
                marker="D",
                ms=6,
                mfc="none",
                mec="tab:blue",
                ls="",
                zorder=6,
            )
        fit_title(ax, f"{_backbone(row)}\n{row.ood_set}: tunnel {_tunnel(row.tunnel)}", fontsize="x-small")
        integer_axis(ax.xaxis)
        ax.set_xlabel("probed layer (index)")
    for ax in axes[:, 0]:
        ax.set_ylabel("OOD probe test acc (%)")
    for ax in list(axes.flat)[len(best) :]:
        ax.set_visible(False)
    level = f"{best.confidence.iloc[0]:.0%}" if len(best) else ""
    handles = [
        plt.Line2D(
            [], [], color="tab:red", marker="o", ms=3, label=f"accuracy, {level} Wilson interval over test images"
        ),
        plt.Line2D([], [], color="tab:red", marker="o", ms=3, mfc="white", ls="", label="distinguishable from best"),
        plt.Line2D([], [], color="gold", marker="*", ms=11, mec="black", ls="", label="best layer"),
        plt.Line2D([], [], marker="D", ms=6, mfc="none", mec="tab:blue", ls="", label="validation-chosen layer"),
        plt.Line2D([], [], color="grey", ls=":", label="chance (1 / classes)"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=2 if ncols < 3 else 5, fontsize="small")
    fig.tight_layout(rect=(0, legend_inches / height, 1, 1))
    save_figure(fig, png, pdf)
