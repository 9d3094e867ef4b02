"""The continual-learning figure: the ID probe curves each run's tunnel is read from."""

from __future__ import annotations

import pandas as pd
from matplotlib.ticker import MaxNLocator

from tunnelscope.figures.style import apply_style, panel_grid, save_figure, sns
from tunnelscope.registry import ARCHS, CELL_VARIABLES, TRAINED


def continual_figure(
    evaluations: list[pd.DataFrame], tunnels: dict[str, dict], run_of: dict[tuple, str], png: str, pdf: str
) -> None:
    """Per run: the ID probe curves the tunnel is read from (E1+T1 on task 1, E2+T2 on task 2),
    each with its threshold line and a star at its own tunnel start, and the chosen tunnel shaded."""
    apply_style()
    curves = pd.concat(
        [t[t.network.isin(list(TRAINED)) & (t.task == t.network.map(TRAINED))] for t in evaluations], ignore_index=True
    )
    curves["run"] = [run_of[tuple(row)] for row in curves[list(CELL_VARIABLES)].itertuples(index=False)]
    runs = list(dict.fromkeys(curves.sort_values("resolution", kind="stable").run))
    fig, axes = panel_grid(len(runs), (5.2, 3.8))
    palette = dict(zip(TRAINED, sns.color_palette("colorblind", 2)))
    for ax, run in zip(axes, runs):
        tunnel, part = tunnels[run], curves[curves.run == run]
        ax.axvspan(
            tunnel["start_layer"] - 0.5,
            tunnel["num_layers"] + 0.5,
            color="0.88",
            zorder=0,
            label=f"tunnel used: layers {tunnel['start_layer']}-{tunnel['num_layers']}",
        )
        for network, task in TRAINED.items():
            rows = part[part.network == network].sort_values("layer")
            acc = 100.0 * rows.test_acc.to_numpy()
            start = tunnel["starts"][f"task{task}"]
            ax.plot(rows.layer, acc, marker="o", ms=3, color=palette[network], label=f"{network} on task {task}")
            ax.axhline(
                tunnel["threshold"] * acc[-1],
                color=palette[network],
                ls=":",
                lw=1,
                label=f"{tunnel['threshold']:.0%} of its last layer",
            )
            ax.plot(
                [start],
                [acc[start - 1]],
                marker="*",
                ms=13,
                color=palette[network],
                ls="none",
                label=f"its tunnel start: layer {start}",
            )
        first = part.iloc[0]
        ax.set_title(
            f"{ARCHS[first.arch]['label']} on {first.id_dataset}, {first.resolution}², {first.augmentation}, seed {first.seed}",
            fontsize="small",
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer (probe point)")
        ax.set_ylabel("ID probe test accuracy (%)")
        ax.legend(fontsize="x-small", loc="lower right")
    fig.tight_layout()
    save_figure(fig, png, pdf)
