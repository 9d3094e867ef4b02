"""Figures of tunnel length and numerical rank against MLP depth and width (Masarczyk et al. 2023)."""

from __future__ import annotations

import pandas as pd
from matplotlib import ticker

from tunnelscope.analysis.tunnel_length import LENGTH_METRICS, SETTING
from tunnelscope.figures.style import apply_style, integer_axis, plt, save_figure, sns


def _setting_label(setting: tuple) -> str:
    dataset, resolution, augmentation = setting
    return f"{dataset}, {resolution}px, aug {augmentation}"


def _palette(n: int) -> list:
    """n ordered colours of viridis without its pale yellow end (unreadable on white)."""
    return sns.color_palette("viridis", n + 1)[:n]


def _line(ax, x, part: pd.DataFrame, colour, label: str) -> None:
    ax.plot(x, part["mean"], marker="o", ms=4, color=colour, label=label)
    if part.ci_low.notna().any():
        ax.fill_between(x, part.ci_low, part.ci_high, color=colour, alpha=0.2, lw=0)


def tunnel_length_figure(summary: pd.DataFrame, confidence: float, png: str, pdf: str) -> None:
    """Rows: settings. Columns: length and fraction against depth (a line per width), then
    against width (a line per depth); mean across seeds with its interval shaded."""
    apply_style()
    settings = summary.groupby(SETTING, sort=True)
    panels = [(m, "depth", "width") for m in LENGTH_METRICS] + [(m, "width", "depth") for m in LENGTH_METRICS]
    fig, axes = plt.subplots(
        settings.ngroups, len(panels), figsize=(4.3 * len(panels), 3.5 * settings.ngroups), squeeze=False
    )
    n_seeds = int(summary.n_seeds.max())
    for row, (setting, here) in zip(axes, settings):
        for ax, (metric, x, line) in zip(row, panels):
            part = here[here.metric == metric]
            levels = sorted(part[line].unique())
            for colour, level in zip(_palette(len(levels)), levels):
                one = part[part[line] == level].sort_values(x)
                _line(ax, one[x].to_numpy(), one, colour, f"{line} {level}")
            ax.set_xlabel("MLP depth (linear layers)" if x == "depth" else "MLP width (hidden units, log scale)")
            ax.set_ylabel(LENGTH_METRICS[metric])
            if x == "width":
                ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(part[x].unique()), [str(v) for v in sorted(part[x].unique())])
            # The whole possible range: 0 to L = depth - 1 layers, or 0 to 1, markers unclipped.
            top = 1.0 if metric == "tunnel_fraction" else float(part.depth.max() - 1)
            ax.set_ylim(-0.04 * top, 1.06 * top)
            if metric == "tunnel_length":
                integer_axis(ax.yaxis)
            ax.set_title(_setting_label(setting), fontsize="small")
            ax.legend(fontsize="x-small", title=None)
    band = (
        f"shaded: {round(confidence * 100)}% t-interval over {n_seeds} seeds"
        if n_seeds > 1
        else "one seed: no interval"
    )
    fig.suptitle(f"ID-rule tunnel length of the MLPs (mean over seeds; {band})", fontsize="medium")
    fig.tight_layout()
    save_figure(fig, png, pdf)


def rank_figure(ranks: pd.DataFrame, confidence: float, png: str, pdf: str) -> None:
    """Rows: settings; columns: depths. Numerical rank per probed layer, a line per width, with
    the class count (dashed) and each width's mean tunnel start (dotted)."""
    apply_style()
    settings = ranks.groupby(SETTING, sort=True)
    depths, widths = sorted(ranks.depth.unique()), sorted(ranks.width.unique())
    fig, axes = plt.subplots(
        settings.ngroups, len(depths), figsize=(4.0 * len(depths), 3.4 * settings.ngroups), squeeze=False
    )
    n_seeds = int(ranks.n_seeds.max())
    for row, (setting, here) in zip(axes, settings):
        for ax, depth in zip(row, depths):
            part = here[here.depth == depth]
            for colour, width in zip(_palette(len(widths)), widths):
                one = part[part.width == width].sort_values("layer")
                if one.empty:
                    continue
                _line(ax, one.layer.to_numpy(), one, colour, f"width {width}")
                ax.axvline(one.mean_id_start.iloc[0], color=colour, ls=":", lw=1.2)
            if len(part):
                ax.axhline(
                    part.id_classes.iloc[0],
                    color="black",
                    ls="--",
                    lw=1,
                    label=f"{int(part.id_classes.iloc[0])} ID classes",
                )
                ax.set_xticks(sorted(part.layer.unique()))
            ax.set_yscale("log")
            # Plain counts (10, 100; minor ticks labelled only over a short range), not 10^k.
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(1.5, 0.5)))
            ax.set_xlabel("probed layer (hidden layer index)")
            ax.set_ylabel("numerical rank (count, log scale)")
            ax.set_title(f"MLP-{depth}: {_setting_label(setting)}", fontsize="small")
            ax.legend(fontsize="x-small")
    band = f"shaded: {round(confidence * 100)}% t-interval over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    fig.suptitle(
        f"Numerical rank of the ID test embeddings per layer (mean; {band}; dotted: tunnel start)", fontsize="medium"
    )
    fig.tight_layout()
    save_figure(fig, png, pdf)
