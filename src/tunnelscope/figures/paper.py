"""The paper build: cross-grid figures, provenance and a static HTML page (tables: tables.py).

Everything is rebuilt from the aggregate and analysis tables alone, one output per function.
"""

from __future__ import annotations

import html
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from tunnelscope.analysis.comparisons import present_levels
from tunnelscope.analysis.table import VARIABLES
from tunnelscope.figures.captions import TABLES, best_layers_caption, figure_caption, table_caption
from tunnelscope.figures.plots import draw_band
from tunnelscope.figures.style import (
    apply_style,
    integer_axis,
    panel_grid,
    plt,
    save_figure,
    say,
    sns,
    wrap_text,
)
from tunnelscope.io import atomic_path, read_csv
from tunnelscope.metrics.health import row_cells
from tunnelscope.metrics.seeds import (
    BACKBONE_VARIABLES,
    CONFIDENCE,
    seed_summary,
    several_seeds,
    summarise,
)
from tunnelscope.metrics.tunnel import STRENGTH_BANDS, normalise
from tunnelscope.registry import CELL_VARIABLES

CELL_COLUMNS = list(CELL_VARIABLES)
STRENGTHS = [name for _, name in STRENGTH_BANDS]  # weakest tunnel first
PACKAGES = [
    "tunnelscope",
    "torch",
    "torchvision",
    "timm",
    "snakemake",
    "numpy",
    "pandas",
    "scikit-learn",
    "scipy",
    "shap",
    "pyarrow",
    "matplotlib",
    "seaborn",
]


CURVE = CELL_COLUMNS + ["eval_set"]  # one probe curve


def depth_grid(curves: pd.DataFrame) -> np.ndarray:
    """One relative-depth grid for curves of different depths: from the deepest of their first
    points (so that every curve covers all of it, no extrapolation) to 1, with as many points as
    the longest curve. Curves that share one depth L get their own points, layer / L."""
    per_curve = curves.groupby(CURVE).relative_depth
    return np.linspace(per_curve.min().max(), 1.0, per_curve.size().max())


def on_depth_grid(curves: pd.DataFrame, column: str) -> pd.DataFrame:
    """Each curve's ``column`` linearly interpolated at ``depth_grid(curves)``, one row per curve
    and grid point: averages over backbones with 10 and 16 probe points then take every curve at
    the same depths. A curve's NaN layers (failed probes) are left out of its interpolation."""
    grid = depth_grid(curves)
    rows = []
    for key, curve in curves.groupby(CURVE, sort=False):
        known = curve[curve[column].notna()].sort_values("relative_depth")
        values = np.interp(grid, known.relative_depth, known[column]) if len(known) else np.full(len(grid), np.nan)
        rows.append(pd.DataFrame({**dict(zip(CURVE, key)), "relative_depth": grid, column: values}))
    return pd.concat(rows, ignore_index=True)


def _normalised_ood(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, OOD set): normalised OOD accuracy on the common relative-depth grid."""
    ood = curves[curves.role == "ood"].copy()
    ood["normalised"] = ood.groupby(CURVE).test_acc.transform(lambda c: normalise(c.to_numpy()))
    return on_depth_grid(ood, "normalised")


def curves_by_variable(
    curves: pd.DataFrame, metrics: pd.DataFrame, png: str, pdf: str, confidence: float = CONFIDENCE
) -> list[str]:
    """One panel per variable with at least two levels: mean normalised OOD curve per level, the
    curves first interpolated onto one relative-depth grid (``on_depth_grid``), shaded ±1 SD over
    cells and OOD sets, or with several seeds per backbone the t-interval across the seeds' level
    curves."""
    apply_style()
    ood = _normalised_ood(curves).merge(
        metrics[CELL_COLUMNS + [v for v in VARIABLES if v not in CELL_COLUMNS]].drop_duplicates(CELL_COLUMNS),
        on=CELL_COLUMNS,
    )
    varying = [v for v in VARIABLES if ood[v].nunique() > 1]
    fig, axes = plt.subplots(1, max(len(varying), 1), figsize=(4.2 * max(len(varying), 1), 3.4), squeeze=False)
    if not varying:  # e.g. the untrained cells left out took a variable's other levels
        say(axes[0, 0], "no variable has two levels among the cells analysed")
    for ax, variable in zip(axes.flat, varying):
        draw_levels(ax, ood, variable, confidence)
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_ylabel("OOD accuracy / curve max")
        ax.set_title(f"by {variable.replace('_', ' ')}")
        ax.set_ylim(0, 1.05)
    fig.tight_layout()
    save_figure(fig, png, pdf)
    return varying


def draw_levels(ax, ood: pd.DataFrame, variable: str, confidence: float = CONFIDENCE) -> None:
    """Mean normalised OOD curve over relative depth per level of ``variable``: one seed per
    backbone, shaded ±1 SD over cells and OOD sets; several, each seed's level curve (mean over
    its cells and OOD sets) summarised by the mean and t-interval across seeds."""
    if not several_seeds(ood):
        sns.lineplot(
            data=ood,
            x="relative_depth",
            y="normalised",
            hue=variable,
            errorbar=("sd", 1),
            marker="o",
            ax=ax,
            palette="colorblind",
        )
        return
    per_seed = ood.groupby([variable, "seed", "relative_depth"], sort=True).normalised.mean().reset_index()
    summary = seed_summary(per_seed, [variable, "relative_depth"], ["normalised"], confidence)
    levels = present_levels(ood[variable])
    for colour, level in zip(sns.color_palette("colorblind", len(levels)), levels):
        part = summary[summary[variable] == level].sort_values("relative_depth")
        draw_band(ax, part.relative_depth.to_numpy(), part, "normalised", colour, str(level))
    ax.legend(title=f"{variable} ({confidence:.0%} CI over seeds)", fontsize="small", title_fontsize="small")


def shap_bars(slopes: pd.DataFrame, png: str, pdf: str) -> None:
    apply_style()
    data = slopes.dropna(subset=["slope"])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if len(data):
        sns.barplot(data=data, y="variable", x="slope", hue="target", ax=ax, palette="colorblind", orient="h")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel("SHAP slope (effect on target per full range of the variable)")
        ax.set_ylabel("")
    else:
        note = slopes.note.dropna().iloc[0] if "note" in slopes and slopes.note.notna().any() else "no slopes"
        say(ax, f"no SHAP slope: {note}")
    fig.tight_layout()
    save_figure(fig, png, pdf)


def strength_histogram(metrics: pd.DataFrame, png: str, pdf: str) -> None:
    """Backbones per strength class, each classed by its % OOD retained averaged over its OOD
    sets and its seeds (so that seeds do not multiply the counts)."""
    apply_style()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    if metrics.empty:
        say(ax, "no backbone to class (every cell left out as untrained)")
        save_figure(fig, png, pdf)
        return
    per_backbone = (
        summarise("metrics", metrics)
        .drop_duplicates(BACKBONE_VARIABLES)
        .strength.value_counts()
        .reindex(STRENGTHS, fill_value=0)
    )
    # Ordered classes, a sequential palette: the stronger the tunnel, the darker its bar.
    ax.bar(per_backbone.index, per_backbone.to_numpy(), color=sns.color_palette("rocket_r", len(STRENGTHS)))
    ax.set_xlabel("tunnel strength (mean % OOD retained: >=95, [90,95), [80,90), <80)")
    ax.set_ylabel("backbones (count)")
    integer_axis(ax.yaxis)
    fig.tight_layout()
    save_figure(fig, png, pdf)


LEGEND_CHARS = 48  # a legend line's width in characters
LAYER_STATS = {
    "numerical_rank": "numerical rank (count)",
    "rankme": "RankMe",
    "nc1": "NC1 (log scale)",
    "cka_to_last": "linear CKA to last layer",
}


def layer_stats_figure(stats: pd.DataFrame, png: str, pdf: str, confidence: float = CONFIDENCE) -> None:
    """Per-layer ID statistics over relative depth, one line per cell; with several seeds per
    backbone, one line per backbone (the seed mean) shaded with the t-interval across seeds."""
    apply_style()
    several = several_seeds(stats)
    if several:
        lines = seed_summary(stats, BACKBONE_VARIABLES + ["layer"], list(LAYER_STATS), confidence)
        lines["cell"] = lines[BACKBONE_VARIABLES].astype(str).agg(" ".join, axis=1) + lines.groupby(
            BACKBONE_VARIABLES, sort=False
        ).n_seeds.transform("max").map(lambda n: f" ({n} seeds)")
    else:
        lines = stats.assign(cell=stats[CELL_COLUMNS].astype(str).agg(" ".join, axis=1))
    lines["relative_depth"] = lines.layer / lines.groupby("cell").layer.transform("max")
    lines["cell"] = lines.cell.map(lambda name: wrap_text(name, LEGEND_CHARS))  # timm names are long
    fig, axes = panel_grid(len(LAYER_STATS), (4.25, 3.6), max_cols=2)
    for ax, (column, label) in zip(axes, LAYER_STATS.items()):
        if column == "nc1":
            ax.set_yscale("log")
        if several:
            names = list(dict.fromkeys(lines.cell))
            for colour, name in zip(sns.color_palette("colorblind", len(names)), names):
                part = lines[lines.cell == name].sort_values("layer")
                draw_band(ax, part.relative_depth.to_numpy(), part, column, colour, name)
            if ax is axes[-1]:
                ax.legend(title=f"backbone ({confidence:.0%} CI over seeds)")
        else:
            sns.lineplot(
                data=lines,
                x="relative_depth",
                y=column,
                hue="cell",
                marker="o",
                ax=ax,
                legend=ax is axes[-1],
                palette="colorblind",
            )
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_ylabel(label)
        if column == "numerical_rank":
            integer_axis(ax.yaxis)
    if axes[-1].get_legend():
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1, 1), fontsize="x-small")
    fig.tight_layout()
    save_figure(fig, png, pdf)


# What ran each cell (cell.json, from runtime.device_info): a row per distinct device.
DEVICE_COLUMNS = ["device", "device_name", "device_capability", "cuda_version", "driver_version", "torch_version"]


def _git(directory: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(directory), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def source_revision(directory: Path = Path(__file__).parent) -> dict | str:
    """The git commit of the checkout holding ``directory`` (the running tunnelscope code by
    default) and whether tracked files differ from it; "not a git checkout" where there is none
    (an installed wheel, even in a virtualenv inside a checkout: its files are not tracked) or git
    is not installed."""
    try:
        _git(directory, "ls-files", "--error-unmatch", "--", ".")  # the code itself under version control
        modified = bool(_git(directory, "status", "--porcelain", "--untracked-files=no"))
        return {"commit": _git(directory, "rev-parse", "HEAD"), "modified": modified}
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"


def devices(cells: pd.DataFrame) -> list[dict]:
    """Each distinct device the cells ran on (the aggregate cells table), with those cells; none
    where the table records no device (a study of published models only: nothing was trained)."""
    present = [c for c in DEVICE_COLUMNS if c in cells.columns]
    if not present:
        return []
    facts = cells[present].assign(cell=row_cells(cells))
    return [
        {**{k: None if pd.isna(v) else v for k, v in zip(present, key)}, "cells": sorted(group["cell"])}
        for key, group in facts.groupby(present, sort=True, dropna=False)
    ]


def provenance(metrics: pd.DataFrame, config: dict, cells: pd.DataFrame | None = None) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    installed = sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions()}, key=str.lower)
    return {
        "cells": metrics.drop_duplicates(CELL_COLUMNS)[CELL_COLUMNS].to_dict("records"),
        "config": config,
        "source": source_revision(),
        "software": versions,
        "installed": installed,  # every distribution in the environment that built this page
        "devices": devices(cells) if cells is not None else [],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_provenance(metrics: pd.DataFrame, config: dict, path: str, cells: pd.DataFrame | None = None) -> None:
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text(json.dumps(provenance(metrics, config, cells), indent=1, sort_keys=True, default=str))


PAGE_HEAD = [
    "<!doctype html><html><head><meta charset='utf-8'><title>tunnelscope paper build</title>",
    "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>",
]
SHAP_TABLE_CAPTION = "SHAP slope per variable and target."


def _name(path: str) -> str:
    """A file's name on the page: its stem (the key of its caption)."""
    return Path(path).stem


def _figure(png: str, src: str, confidence: float, heading: bool = True) -> list[str]:
    name = _name(png)
    words = html.escape(name.replace("_", " "))
    title = [f"<h2>{words}</h2>"] if heading else []
    return title + [
        f"<p><img src='{html.escape(src)}' alt='{words}'></p>",
        f"<p>{html.escape(figure_caption(name, confidence))}</p>",
    ]


def _table(csv: str, href: str, caption: str, title: str) -> list[str]:
    return [
        f"<h2>{html.escape(title)}</h2>",
        f"<p>{html.escape(caption)} <a href='{html.escape(href)}'>CSV</a></p>",
        read_csv(csv).to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–"),
    ]


def _note_and_list(lines: list[str]) -> list[str]:
    """The first line as a note, the others as a list under it."""
    return [
        *(f"<p class='note'>{html.escape(line)}</p>" for line in lines[:1]),
        *([f"<ul>{''.join(f'<li>{html.escape(line)}</li>' for line in lines[1:])}</ul>"] if lines[1:] else []),
    ]


def html_page(
    page: str,
    overview: str,
    figures: list[str],
    tables: list[str],
    slopes: str | None,
    provenance_json: str,
    confidence: float = CONFIDENCE,
    best_layers: tuple[str, float] | None = None,
    absent: list[str] = (),
    health: list[str] = (),
    probe_health: list[str] = (),
    more: list[tuple[str, str, str]] = (),
) -> None:
    """A static page with every figure and table, readable without Snakemake: the given files,
    linked relative to the page, figures with the Snakemake report's captions (captions.FIGURES).
    ``best_layers``: (its readable CSV, metrics.alpha), shown first among the tables;
    ``absent``: one line per study-level part the grid does not fill (Study.absent_parts);
    ``health``, ``probe_health``: the training-health and probe-health lines
    (metrics.health.health_lines, probe_failure_lines), each a note then a list; ``more``: the
    report's other items (path, title, caption; captions.ITEMS), figures (.png) and tables (.csv)."""

    def link(path: str) -> str:
        return os.path.relpath(path, Path(page).parent)

    parts = [
        *PAGE_HEAD,
        "<h1>tunnelscope paper build</h1>",
        *_note_and_list(health),
        *_note_and_list(probe_health),
        *(f"<p class='note'>{html.escape(line)}</p>" for line in absent),
        *_figure(overview, link(overview), confidence, heading=False),
    ]
    for png in figures:
        parts += _figure(png, link(png), confidence)
    if best_layers:
        csv, alpha = best_layers
        parts += _table(csv, link(csv), best_layers_caption(alpha), "best layers (table)")
    for csv in tables:
        parts += _table(
            csv,
            link(csv),
            table_caption(_name(csv), confidence),
            f"{_name(csv).replace('_', ' ')} ({TABLES[_name(csv)][0]})",
        )
    if slopes:
        parts += _table(slopes, link(slopes), SHAP_TABLE_CAPTION, _name(slopes).replace("_", " "))
    for path, title, caption in more:
        if path.endswith(".csv"):
            parts += _table(path, link(path), caption, title)
        else:
            parts += [
                f"<h2>{html.escape(title)}</h2>",
                f"<p><img src='{html.escape(link(path))}' alt='{html.escape(title)}'></p>",
                f"<p>{html.escape(caption)}</p>",
            ]
    prov = json.loads(Path(provenance_json).read_text())
    shown = {
        "software": {name: prov["software"].get(name) for name in PACKAGES},
        "python": prov["python"],
        "platform": prov["platform"],
    }  # PACKAGES' order
    parts += [
        "<h2>provenance</h2>",
        f"<pre>{html.escape(json.dumps(shown, indent=1))}</pre>",
        f"<p>{len(prov['cells'])} cells; full config in {html.escape(link(provenance_json))}.</p></body></html>",
    ]
    with atomic_path(Path(page)) as tmp:
        Path(tmp).write_text("\n".join(parts))
