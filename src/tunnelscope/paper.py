"""The paper build: cross-grid figures, tables (CSV + LaTeX), provenance and a static HTML page.

Everything is rebuilt from the aggregate and analysis tables alone.
"""

from __future__ import annotations

import html
import json
import platform
from importlib import metadata
from pathlib import Path

import pandas as pd

from .analysis import VARIABLES
from .captions import TABLES, table_caption
from .config import CELL_VARIABLES
from .io import atomic_path
from .metrics import normalise
from .plots import _save, _style, plt, sns

CELL_COLUMNS = list(CELL_VARIABLES)
STRENGTHS = ["negligible", "weak", "medium", "strong"]
PACKAGES = ["tunnelscope", "torch", "torchvision", "timm", "snakemake", "numpy", "pandas", "scikit-learn", "scipy", "shap", "pyarrow", "matplotlib", "seaborn"]


def _normalised_ood(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, OOD set): normalised OOD accuracy over relative depth."""
    ood = curves[curves.role == "ood"].copy()
    ood["normalised"] = ood.groupby(CELL_COLUMNS + ["eval_set"]).test_acc.transform(lambda c: normalise(c.to_numpy()))
    return ood


def curves_by_variable(curves: pd.DataFrame, metrics: pd.DataFrame, png: str, pdf: str) -> list[str]:
    """One panel per variable with at least two levels: mean normalised OOD curve per level."""
    _style()
    ood = _normalised_ood(curves).merge(metrics[CELL_COLUMNS + [v for v in VARIABLES if v not in CELL_COLUMNS]].drop_duplicates(CELL_COLUMNS), on=CELL_COLUMNS)
    varying = [v for v in VARIABLES if ood[v].nunique() > 1]
    panels = varying or ["augmentation"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, variable in zip(axes.flat, panels):
        sns.lineplot(data=ood, x="relative_depth", y="normalised", hue=variable, errorbar=("sd", 1), marker="o", ax=ax, palette="colorblind")
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_ylabel("OOD accuracy / curve max")
        ax.set_title(f"by {variable.replace('_', ' ')}")
        ax.set_ylim(0, 1.05)
    fig.tight_layout()
    _save(fig, png, pdf)
    return varying


def shap_bars(slopes: pd.DataFrame, png: str, pdf: str) -> None:
    _style()
    data = slopes.dropna(subset=["slope"])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if len(data):
        sns.barplot(data=data, y="variable", x="slope", hue="target", ax=ax, palette="colorblind", orient="h")
    else:
        ax.text(0.5, 0.5, "no variable has two levels in this grid", ha="center", va="center", transform=ax.transAxes)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("SHAP slope (effect on target per full range of the variable)")
    ax.set_ylabel("")
    fig.tight_layout()
    _save(fig, png, pdf)


def strength_histogram(metrics: pd.DataFrame, png: str, pdf: str) -> None:
    _style()
    per_cell = metrics.drop_duplicates(CELL_COLUMNS).strength.value_counts().reindex(STRENGTHS, fill_value=0)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.bar(per_cell.index, per_cell.to_numpy(), color=sns.color_palette("rocket_r", 4))
    ax.set_xlabel("tunnel strength (mean % OOD retained: >=95, [90,95), [80,90), <80)")
    ax.set_ylabel("backbones (count)")
    fig.tight_layout()
    _save(fig, png, pdf)


def layer_stats_figure(stats: pd.DataFrame, png: str, pdf: str) -> None:
    _style()
    stats = stats.copy()
    stats["cell"] = stats[CELL_COLUMNS].astype(str).agg(" ".join, axis=1)
    stats["relative_depth"] = stats.layer / stats.groupby("cell").layer.transform("max")
    columns = [("numerical_rank", "numerical rank (count)"), ("rankme", "RankMe"), ("nc1", "NC1 (log scale)"), ("cka_to_last", "linear CKA to last layer")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for ax, (column, label) in zip(axes, columns):
        sns.lineplot(data=stats, x="relative_depth", y=column, hue="cell", marker="o", ax=ax, legend=ax is axes[-1], palette="colorblind")
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_ylabel(label)
        if column == "nc1":
            ax.set_yscale("log")
    if axes[-1].get_legend():
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1, 1), fontsize="x-small")
    fig.tight_layout()
    _save(fig, png, pdf)


def provenance(metrics: pd.DataFrame, config: dict) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cells = metrics.drop_duplicates(CELL_COLUMNS)[CELL_COLUMNS].to_dict("records")
    return {"cells": cells, "config": config, "software": versions, "python": platform.python_version(), "platform": platform.platform()}


FIGURES = {
    "curves_by_variable": "Mean normalised OOD probe curve per level of each variable that varies in the grid (±1 SD over cells and OOD sets).",
    "shap_slopes": "SHAP slope of each variable on each target (% OOD retained / 100, Pearson ρ, ID/OOD alignment); empty where a variable has a single level.",
    "strength_histogram": "Backbones per tunnel-strength class, from % OOD retained averaged over each backbone's OOD sets.",
    "layer_stats": "Per-layer statistics of ID embeddings: numerical rank, RankMe, NC1 and linear CKA to the last probed layer.",
}


def html_page(out_dir: Path, page: str, prov: dict, tables: dict[str, pd.DataFrame], slopes: pd.DataFrame) -> None:
    """A static page with every figure and table, readable without Snakemake."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>tunnelscope paper build</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>",
             "<h1>tunnelscope paper build</h1>", "<p><img src='../figures/tunnel_curves.png' alt='tunnel curves'></p>",
             "<p>Normalised tunnel curves of every cell (ID black, OOD mean ±1 SD red, star at the OOD peak).</p>"]
    for name, caption in FIGURES.items():
        parts += [f"<h2>{html.escape(name.replace('_', ' '))}</h2>", f"<p><img src='{name}.png' alt='{name}'></p>", f"<p>{html.escape(caption)}</p>"]
    for name, frame in {**tables, "shap_slopes": slopes}.items():
        caption = table_caption(name) if name in tables else "SHAP slope per variable and target (analysis/shap_slopes.csv)."
        title = name.replace("_", " ") + (f" ({TABLES[name][0]})" if name in TABLES else "")
        parts += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(caption)} <a href='tables/{name}.csv'>CSV</a></p>" if name in tables else f"<p>{html.escape(caption)}</p>",
                  frame.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–")]
    parts += ["<h2>provenance</h2>", f"<pre>{html.escape(json.dumps({k: prov[k] for k in ('software', 'python', 'platform')}, indent=1))}</pre>",
              f"<p>{len(prov['cells'])} cells; full config in provenance.json.</p></body></html>"]
    with atomic_path(out_dir / page) as tmp:
        Path(tmp).write_text("\n".join(parts))


def build(curves: pd.DataFrame, metrics: pd.DataFrame, stats: pd.DataFrame, slopes: pd.DataFrame, tables: dict[str, pd.DataFrame], config: dict, out_dir: str) -> None:
    """Figures, provenance.json and index.html; ``tables`` = the paper tables by name (CSV frames)."""
    out = Path(out_dir)
    curves_by_variable(curves, metrics, str(out / "curves_by_variable.png"), str(out / "curves_by_variable.pdf"))
    shap_bars(slopes, str(out / "shap_slopes.png"), str(out / "shap_slopes.pdf"))
    strength_histogram(metrics, str(out / "strength_histogram.png"), str(out / "strength_histogram.pdf"))
    layer_stats_figure(stats, str(out / "layer_stats.png"), str(out / "layer_stats.pdf"))
    prov = provenance(metrics, config)
    with atomic_path(out / "provenance.json") as tmp:
        Path(tmp).write_text(json.dumps(prov, indent=1, sort_keys=True, default=str))
    html_page(out, "index.html", prov, tables, slopes)
