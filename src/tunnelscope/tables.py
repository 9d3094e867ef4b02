"""The paper's tables from any study, as CSV and LaTeX (captions in ``captions.TABLES``).

- ``id_accuracy`` (Table 11): ID top-1 per backbone, one column per resolution and augmentation.
- ``ood_accuracy``, ``ood_retained``, ``pearson``, ``alignment`` (Tables 4-7): one row per
  backbone, one column per OOD set (by its position in the cell's list, so the CIFAR-100 column of
  ImageNet cells holds CIFAR-10 for CIFAR-100 cells, as in the paper) and their mean.
- ``level_means`` (Table 12) and ``effect_sizes`` (Tables 1 and 13) from the analysis.

Backbones are rows in the study's grid order; seeds are averaged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .captions import table_caption
from .io import atomic_path

# A backbone is keyed by its cell's arch (two published models may share a timm/torchvision
# label); ``label`` (VGGm-11, ...) is what the tables print.
BACKBONE = ["id_dataset", "arch", "resolution", "augmentation"]
# Characters of the labels that plain pdflatex needs as math.
LATEX_SYMBOLS = {"|δ|": r"$|\delta|$", "²": r"$^2$", "†": r"$^\dagger$"}
TARGET_NAMES = {"ood_retained": "% retained", "pearson": "Pearson", "alignment": "alignment"}
# (metrics column, scale, decimals) of the per-OOD-set tables
OOD_TABLES = {"ood_accuracy": ("ood_last_acc", 100.0, 2), "ood_retained": ("ood_retained", 1.0, 2), "pearson": ("pearson", 1.0, 2), "alignment": ("alignment", 1.0, 3)}


def _aug_label(value: str) -> str:
    return "no aug" if value == "none" else "aug"


def spread(frame: pd.DataFrame, keys: list[str], column: str, value: str, columns: list | None = None) -> pd.DataFrame:
    """Long to wide: one row per distinct ``keys`` (in order of first appearance, which pandas'
    pivot does not keep), one column per value of ``column`` (``columns`` order), means of
    ``value`` where several rows share a cell (seeds)."""
    rows = frame[keys].drop_duplicates().reset_index(drop=True)
    for level in columns if columns is not None else list(dict.fromkeys(frame[column])):
        part = frame[frame[column] == level].groupby(keys, sort=False)[value].mean().rename(level).reset_index()
        rows = rows.merge(part, on=keys, how="left")
    return rows


def id_accuracy(cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(CSV table, LaTeX table) of ID top-1 in %: rows (ID set, backbone), columns resolution x
    augmentation; LaTeX cells read "no aug / aug" as in the paper."""
    top1 = cells.assign(top1=100.0 * pd.to_numeric(cells.test_acc, errors="coerce"), setting=cells.resolution.astype(str) + " " + cells.augmentation)
    augs = list(dict.fromkeys(top1.augmentation))
    resolutions = sorted(top1.resolution.unique())
    wide = _labelled(spread(top1, ["id_dataset", "arch"], "setting", "top1", [f"{r} {a}" for r in resolutions for a in augs]), cells)
    latex = wide[["id_dataset", "backbone"]].rename(columns={"id_dataset": "ID set"})
    for r in resolutions:
        latex[f"{r}²"] = [" / ".join(_fmt(v, 2) for v in values) if not np.isnan(values).all() else "–" for values in wide[[f"{r} {a}" for a in augs]].itertuples(index=False)]
    return wide.round(2), latex


def _labelled(wide: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """``wide`` with a ``backbone`` column (the arch's label) after ``arch``."""
    labels = dict(zip(rows.arch, rows.label))
    wide.insert(wide.columns.get_loc("arch") + 1, "backbone", wide.arch.map(labels))
    return wide


def ood_table(metrics: pd.DataFrame, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(CSV, LaTeX) of one metric per backbone and OOD set, plus the mean over the OOD sets."""
    column, scale, decimals = OOD_TABLES[name]
    rows = metrics.assign(value=pd.to_numeric(metrics[column], errors="coerce") * scale)
    heads = rows.groupby("ood_index", sort=True).ood_set.agg(lambda s: " / ".join(dict.fromkeys(s)))
    csv = _labelled(spread(rows, BACKBONE, "ood_index", "value", list(heads.index)).rename(columns=dict(heads.items())), rows)
    csv["mean"] = csv[list(heads)].mean(axis=1)
    csv["augmentation"] = csv.augmentation.map(_aug_label)
    latex = csv.drop(columns="arch")
    for col in [*heads, "mean"]:
        latex[col] = latex[col].map(lambda v: _fmt(v, decimals))
    return csv.round(decimals + 1), latex.rename(columns={"id_dataset": "ID set", "resolution": "res."})


def level_means(means: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(CSV, LaTeX) of Table 12: per comparison and level, the mean of each target."""
    means = means.assign(level=means.level.map(_level))
    wide = spread(means, ["comparison", "level"], "target", "mean", [t for t in TARGET_NAMES if t in set(means.target)])
    counts = means[means.target == "ood_retained"][["comparison", "level", "n"]].rename(columns={"n": "rows"})
    csv = wide.rename(columns=TARGET_NAMES).merge(counts, on=["comparison", "level"], how="left")
    latex = csv.copy()
    for label in TARGET_NAMES.values():
        if label in latex:
            latex[label] = latex[label].map(lambda v: _fmt(v, 2))
    return csv.round(4), latex


def effect_sizes(paired: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(CSV, LaTeX) of Tables 1 and 13: |delta| and p per comparison, level pair and target."""
    tests = paired.dropna(subset=["level_from"]).assign(level_from=lambda t: t.level_from.map(_level), level_to=lambda t: t.level_to.map(_level))
    keys = ["comparison", "level_from", "level_to"]
    wide = tests[tests.target == "ood_retained"][keys + ["n_pairs"]].rename(columns={"n_pairs": "pairs"})
    for target, label in TARGET_NAMES.items():
        part = tests[tests.target == target][keys + ["abs_delta", "wilcoxon_p"]].rename(columns={"abs_delta": f"{label} |δ|", "wilcoxon_p": f"{label} p"})
        wide = wide.merge(part, on=keys, how="left")
    wide = wide[[c for c in wide.columns if c != "pairs"] + ["pairs"]]
    latex = wide.copy()
    for col in latex.columns:
        if col.endswith("|δ|"):
            latex[col] = latex[col].map(lambda v: _fmt(v, 3))
        elif col.endswith(" p"):
            latex[col] = latex[col].map(_fmt_p)
    return wide.round(4), latex.rename(columns={"level_from": "from", "level_to": "to"})


def _level(value):
    """Levels as the tables print them: gamma to two decimals, integers without a point."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return round(value, 2) if isinstance(value, float) else value


def _fmt(value, decimals: int) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{decimals}f}"


def _fmt_p(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _latex_text(text: str) -> str:
    """Plain text for a LaTeX argument (pandas escapes the cells, not the caption)."""
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text


def write(name: str, csv: pd.DataFrame, latex: pd.DataFrame, csv_path: str, tex_path: str, caption: str | None = None) -> None:
    """The table as CSV and as LaTeX (``caption``: default the paper table's of ``name``)."""
    with atomic_path(csv_path) as tmp:
        csv.to_csv(tmp, index=False)
    tex = latex.to_latex(index=False, caption=_latex_text(caption or table_caption(name)), label=f"tab:{name}", na_rep="–", escape=True)
    for text, macro in LATEX_SYMBOLS.items():
        tex = tex.replace(text, macro)
    with atomic_path(tex_path) as tmp:
        Path(tmp).write_text(tex)


def build(name: str, cells: pd.DataFrame, metrics: pd.DataFrame, means: pd.DataFrame, paired: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    if name == "id_accuracy":
        return id_accuracy(cells)
    if name in OOD_TABLES:
        return ood_table(metrics, name)
    if name == "level_means":
        return level_means(means)
    if name == "effect_sizes":
        return effect_sizes(paired)
    raise ValueError(f"unknown paper table {name!r}")
