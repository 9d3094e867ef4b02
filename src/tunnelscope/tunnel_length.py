"""Tunnel length against depth and width, Masarczyk et al. (2023) style, over the MLP cells.

The tunnel starts at the first layer whose ID probe accuracy reaches a fraction (0.95) of the
last layer's (``metrics.id_tunnel_start``); its length is L - start over the L probed layers.
Per (setting, depth, width) the values of the cells that differ only in their seed are summarised
by their mean and a Student-t interval of that mean; the figures draw exactly these tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import ticker
from scipy import stats

from .config import CELL_VARIABLES, MLP_NAME, parse_mlp
from .plots import _save, _style, plt, sns

# A setting = the cell variables other than the architecture and the seed: one figure row each.
SETTING = ["id_dataset", "resolution", "augmentation"]
MLP_KEYS = [*SETTING, "depth", "width"]
METRICS = {"tunnel_length": "tunnel length (layers)", "tunnel_fraction": "tunnel length / probed layers"}


def seed_interval(values, confidence: float = 0.95) -> dict:
    """Mean of ``values`` (one per seed) and the Student-t interval of that mean; no interval
    (NaN) from a single seed, a zero-width one when all seeds agree."""
    values = np.asarray(values, dtype=float)
    n, mean = len(values), float(values.mean())
    if n < 2:
        return {"mean": mean, "ci_low": float("nan"), "ci_high": float("nan"), "n_seeds": n}
    sem = float(stats.sem(values))
    low, high = (mean, mean) if sem == 0 else stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return {"mean": mean, "ci_low": float(low), "ci_high": float(high), "n_seeds": n}


def _mlp_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of MLP cells, with their depth and hidden width parsed from the arch name."""
    mlp = table[table.arch.map(lambda a: MLP_NAME.fullmatch(str(a)) is not None)].copy()
    shape = mlp.arch.map(parse_mlp)
    mlp["depth"] = shape.map(lambda s: s[0]).astype(int)
    mlp["width"] = shape.map(lambda s: s[1]).astype(int)
    return mlp


def cell_table(metrics: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """One row per MLP cell: depth, width, probed layers L, ID-rule tunnel start and length (in
    layers and as a fraction of L) at ``threshold``, and the last layer's ID probe accuracy."""
    start, length = (f"{name}_{round(threshold * 100)}" for name in ("id_start", "id_tunnel_length"))
    missing = [c for c in (start, length) if c not in metrics.columns]
    if missing:
        raise ValueError(f"the metrics table has no {', '.join(missing)}: add {threshold} to metrics.id_start_thresholds")
    # The ID rule reads the ID curve only, so every OOD row of a cell carries the same values.
    cells = _mlp_columns(metrics.drop_duplicates(list(CELL_VARIABLES)))
    if cells.empty:
        raise ValueError("the study has no MLP cells (arch mlpDEPTH-wWIDTH) to plot tunnel lengths of")
    table = cells[[*CELL_VARIABLES, "depth", "width", "id_classes", "num_layers", "id_last_acc"]].assign(
        threshold=threshold,
        id_start=cells[start].astype(int),
        tunnel_length=cells[length].astype(int),
        tunnel_fraction=cells[length] / cells.num_layers,
    )
    return table.sort_values([*MLP_KEYS, "seed"]).reset_index(drop=True)


def summary_table(cells: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Per (setting, depth, width) and metric: mean and interval across seeds (the plotted values)."""
    rows = []
    for key, group in cells.groupby(MLP_KEYS, sort=True):
        for metric in METRICS:
            rows.append({**dict(zip(MLP_KEYS, key)), "metric": metric, **seed_interval(group[metric], confidence)})
    return pd.DataFrame(rows)


def rank_table(layer_stats: pd.DataFrame, cells: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Per (setting, depth, width, layer): numerical rank of the ID embeddings across seeds, with
    the cells' class count and mean ID-rule tunnel start (for the reference lines)."""
    # The cells of the tunnel table, nothing else.
    mlp = _mlp_columns(layer_stats).merge(cells[list(CELL_VARIABLES)], on=list(CELL_VARIABLES))
    starts = cells.groupby(MLP_KEYS).agg(id_classes=("id_classes", "first"), mean_id_start=("id_start", "mean")).reset_index()
    rows = []
    for key, group in mlp.groupby([*MLP_KEYS, "layer"], sort=True):
        rows.append({**dict(zip([*MLP_KEYS, "layer"], key)), **seed_interval(group.numerical_rank, confidence)})
    return pd.DataFrame(rows).merge(starts, on=MLP_KEYS, how="left")


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
    _style()
    settings = summary.groupby(SETTING, sort=True)
    panels = [(m, "depth", "width") for m in METRICS] + [(m, "width", "depth") for m in METRICS]
    fig, axes = plt.subplots(settings.ngroups, len(panels), figsize=(4.3 * len(panels), 3.5 * settings.ngroups), squeeze=False)
    n_seeds = int(summary.n_seeds.max())
    for row, (setting, here) in zip(axes, settings):
        for ax, (metric, x, line) in zip(row, panels):
            part = here[here.metric == metric]
            levels = sorted(part[line].unique())
            for colour, level in zip(_palette(len(levels)), levels):
                one = part[part[line] == level].sort_values(x)
                _line(ax, one[x].to_numpy(), one, colour, f"{line} {level}")
            ax.set_xlabel("MLP depth (linear layers)" if x == "depth" else "MLP width (hidden units, log scale)")
            ax.set_ylabel(METRICS[metric])
            if x == "width":
                ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(part[x].unique()), [str(v) for v in sorted(part[x].unique())])
            # The whole possible range: 0 to L = depth - 1 layers, or 0 to 1, markers unclipped.
            top = 1.0 if metric == "tunnel_fraction" else float(part.depth.max() - 1)
            ax.set_ylim(-0.04 * top, 1.06 * top)
            ax.set_title(_setting_label(setting), fontsize="small")
            ax.legend(fontsize="x-small", title=None)
    band = f"shaded: {round(confidence * 100)}% t-interval over {n_seeds} seeds" if n_seeds > 1 else "one seed: no interval"
    fig.suptitle(f"ID-rule tunnel length of the MLPs (mean over seeds; {band})", fontsize="medium")
    fig.tight_layout()
    _save(fig, png, pdf)


def rank_figure(ranks: pd.DataFrame, confidence: float, png: str, pdf: str) -> None:
    """Rows: settings; columns: depths. Numerical rank per probed layer, a line per width, with
    the class count (dashed) and each width's mean tunnel start (dotted)."""
    _style()
    settings = ranks.groupby(SETTING, sort=True)
    depths, widths = sorted(ranks.depth.unique()), sorted(ranks.width.unique())
    fig, axes = plt.subplots(settings.ngroups, len(depths), figsize=(4.0 * len(depths), 3.4 * settings.ngroups), squeeze=False)
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
                ax.axhline(part.id_classes.iloc[0], color="black", ls="--", lw=1, label=f"{int(part.id_classes.iloc[0])} ID classes")
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
    fig.suptitle(f"Numerical rank of the ID test embeddings per layer (mean; {band}; dotted: tunnel start)", fontsize="medium")
    fig.tight_layout()
    _save(fig, png, pdf)
