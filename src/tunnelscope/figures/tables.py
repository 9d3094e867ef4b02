"""The paper's tables from any study, as CSV and LaTeX (captions in ``captions.TABLES``).

- ``id_accuracy`` (Table 11): ID top-1 per backbone, one column per resolution and augmentation.
- ``ood_accuracy``, ``ood_retained``, ``pearson``, ``alignment`` (Tables 4-7): one row per
  backbone, one column per OOD set (by its position in the cell's list, so the CIFAR-100 column of
  ImageNet cells holds CIFAR-10 for CIFAR-100 cells, as in the paper) and their mean.
- ``level_means`` (Table 12) and ``effect_sizes`` (Tables 1 and 13) from the analysis.

Units: accuracies are fractions (0-1) in every CSV, as in the Parquet tables; the LaTeX tables
print them in % as the paper does (captions say so). % retained is a percentage throughout.
Augmentation levels keep the config's names (none, rrc_flip) in every table.

Backbones are rows in the study's grid order. Seeds are averaged; where a backbone has several,
the CSV gets ``NAME ci_low`` / ``NAME ci_high`` beside every value column (the t-interval across
seeds of ``seeds.seed_summary``) and a ``seeds`` column, and the LaTeX cells read
"mean ± half-width" ([low, high] for effect sizes). With one seed per backbone the tables are
the plain means, as the paper prints them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tunnelscope.figures.captions import table_caption
from tunnelscope.io import atomic_path, write_csv
from tunnelscope.metrics.seeds import CONFIDENCE, seed_summary
from tunnelscope.registry import ANALYSIS_TARGETS, ARCHS, metric_label

# What keys a backbone's row in the per-OOD-set tables, the ID set first as the paper lists them:
# its cell's arch (two published models may share a timm/torchvision label); ``label``
# (VGGm-11, ...) is what the tables print.
TABLE_ROW_KEYS = ["id_dataset", "arch", "resolution", "augmentation"]
# Characters of the labels that plain pdflatex needs as math.
LATEX_SYMBOLS = {
    "|δ|": r"$|\delta|$",
    "|Δ|": r"$|\Delta|$",
    "Δ": r"$\Delta$",
    "²": r"$^2$",
    "†": r"$^\dagger$",
    "±": r"$\pm$",
}
# (metrics column, scale of the LaTeX table (100: an accuracy, printed in %), decimals there)
# of the per-OOD-set tables; their CSVs hold the metrics column's own unit.
OOD_TABLES = {
    "ood_accuracy": ("ood_last_acc", 100.0, 2),
    "ood_retained": ("ood_retained", 1.0, 2),
    "pearson": ("pearson", 1.0, 2),
    "alignment": ("alignment", 1.0, 3),
}


def _scaled(frame: pd.DataFrame, columns: list[str], scale: float) -> pd.DataFrame:
    """``frame`` with ``columns`` multiplied by ``scale`` (a fraction's table printed in %)."""
    return frame.assign(**{c: frame[c] * scale for c in columns})


def id_accuracy(cells: pd.DataFrame, confidence: float = CONFIDENCE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(CSV table, LaTeX table) of ID top-1 (a fraction in the CSV, % in LaTeX): rows (ID set,
    backbone), columns resolution x augmentation; LaTeX cells read "none / rrc_flip" (the
    study's augmentation levels in grid order) as the paper's "no aug / aug" (each "mean ±
    half-interval" with several seeds)."""
    top1 = cells.assign(
        top1=pd.to_numeric(cells.test_acc, errors="coerce"),
        setting=cells.resolution.astype(str) + " " + cells.augmentation,
    )
    augs = list(dict.fromkeys(top1.augmentation))
    resolutions = sorted(top1.resolution.unique())
    wide, with_ci = seed_spread(
        top1, ["id_dataset", "arch"], "setting", "top1", [f"{r} {a}" for r in resolutions for a in augs], confidence
    )
    wide = _labelled(wide, cells)
    values = [c for c in wide.columns if c not in ("id_dataset", "arch", "backbone", "seeds")]
    percent = _scaled(wide, values, 100.0)
    latex = wide[["id_dataset", "backbone"]].rename(columns={"id_dataset": "ID set"})
    for r in resolutions:
        settings = [f"{r} {a}" for a in augs]
        latex[f"{r}²"] = [
            " / ".join(_fmt_ci(row, s, 2, with_ci) for s in settings) if not row[settings].isna().all() else "–"
            for _, row in percent.iterrows()
        ]
    if with_ci:
        latex["seeds"] = wide.seeds
    return wide.round(4), latex


def _labelled(wide: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """``wide`` with a ``backbone`` column (the arch's label) after ``arch``."""
    labels = dict(zip(rows.arch, rows.label))
    wide.insert(wide.columns.get_loc("arch") + 1, "backbone", wide.arch.map(labels))
    return wide


def ood_table(metrics: pd.DataFrame, name: str, confidence: float = CONFIDENCE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(CSV, LaTeX) of one metric per backbone and OOD set, plus the mean over the OOD sets;
    with several seeds the mean's interval is over each seed's mean over the OOD sets."""
    column, scale, decimals = OOD_TABLES[name]
    rows = metrics.assign(value=pd.to_numeric(metrics[column], errors="coerce"))
    heads = rows.groupby("ood_index", sort=True).ood_set.agg(lambda s: " / ".join(dict.fromkeys(s)))
    csv, with_ci = seed_spread(rows, TABLE_ROW_KEYS, "ood_index", "value", list(heads.index), confidence)
    csv = csv.rename(
        columns={index: head for index, head in heads.items()}
        | {f"{index} {bound}": f"{head} {bound}" for index, head in heads.items() for bound in CI}
    )
    over_sets = seed_summary(
        rows.groupby(TABLE_ROW_KEYS + ["seed"], sort=False).value.mean().reset_index(),
        TABLE_ROW_KEYS,
        ["value"],
        confidence,
    )
    over_sets = over_sets.rename(
        columns={"value": "mean", "value_ci_low": "mean ci_low", "value_ci_high": "mean ci_high"}
    )
    csv = csv.merge(over_sets[TABLE_ROW_KEYS + _with_bounds("mean", with_ci)], on=TABLE_ROW_KEYS, how="left")
    if with_ci:
        csv = csv[[c for c in csv.columns if c != "seeds"] + ["seeds"]]
    csv = _labelled(csv, rows)
    values = [*heads.to_list(), "mean"]
    printed = _scaled(csv, [c for c in csv.columns if c.split(" ci_")[0] in values], scale)
    latex = csv[[c for c in csv.columns if c != "arch" and not c.endswith(CI)]].copy()
    for col in values:
        latex[col] = [_fmt_ci(row, col, decimals, with_ci) for _, row in printed.iterrows()]
    # as many decimals as the LaTeX table's, and one more, in the CSV's own unit
    return csv.round(decimals + 1 + round(np.log10(scale))), latex.rename(
        columns={"id_dataset": "ID set", "resolution": "res."}
    )


def level_means(means: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(CSV, LaTeX) of Table 12: per comparison and level, the mean of each target; with several
    seeds also its t-interval across the seeds' level means."""
    means = means.assign(level=means.level.map(_level))
    with_ci = "n_seeds" in means.columns and bool(means.n_seeds.max() > 1)
    keys, targets = ["comparison", "level"], analysis_targets(means.target)
    labels = {target: metric_label(target) for target in targets}
    csv = spread(means, keys, "target", "mean", targets).rename(columns=labels)
    if with_ci:
        for target in targets:
            for bound in CI:
                csv[f"{labels[target]} {bound}"] = spread(means, keys, "target", f"seed_{bound}", [target])[target]
        csv = csv[keys + [c for t in targets for c in _with_bounds(labels[t], True)]]
    counts = means[means.target == "ood_retained"][keys + ["n"] + (["n_seeds"] if with_ci else [])]
    csv = csv.merge(counts.rename(columns={"n": "rows", "n_seeds": "seeds"}), on=keys, how="left")
    latex = csv[[c for c in csv.columns if not c.endswith(CI)]].copy()
    for label in labels.values():
        if label in latex:
            latex[label] = [_fmt_ci(row, label, 2, with_ci) for _, row in csv.iterrows()]
    return csv.round(4), latex


# Columns of Tables 1 and 13 per target at the backbone level (analysis.comparisons'
# backbone_level and judge), where the paired tests have them; the raw backbone p stays in the CSV.
BACKBONE_COLUMNS = {"backbone_p": "p (backbones)", "backbone_p_holm": "p (backbones, Holm)", "verdict": "verdict"}


def effect_sizes(paired: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(CSV, LaTeX) of Tables 1 and 13: |delta| and p per comparison, level pair and target, at
    both levels: the row pairs' Wilcoxon p, and (where the analysis has them) the backbone pairs'
    p, raw and Holm-adjusted, and the verdict at the analysis unit. With several seeds, |delta|
    gets the t-interval of the per-seed delta, signed so that positive is the direction of the
    pooled delta (an interval reaching below 0: seeds disagree)."""
    tests = paired.dropna(subset=["level_from"]).assign(
        level_from=lambda t: t.level_from.map(_level), level_to=lambda t: t.level_to.map(_level)
    )
    with_ci = "n_seeds" in tests.columns and bool(tests.n_seeds.max() > 1)
    backbone = [c for c in BACKBONE_COLUMNS if c in tests.columns]
    counts = {"n_pairs": "pairs", "n_seeds": "seeds", "n_backbone_pairs": "backbone pairs"}
    keys = ["comparison", "level_from", "level_to"]
    count_columns = ["n_pairs"] + (["n_backbone_pairs"] if backbone else []) + (["n_seeds"] if with_ci else [])
    wide = tests[tests.target == "ood_retained"][keys + count_columns].rename(columns=counts)
    analysis_targets(tests.target)
    for target in ANALYSIS_TARGETS:
        label, part = metric_label(target), tests[tests.target == target]
        columns = {f"{label} |δ|": part.abs_delta}
        if with_ci:
            sign = np.where(part.cliffs_delta < 0, -1.0, 1.0)
            low, high = sign * part.delta_ci_low, sign * part.delta_ci_high
            columns |= {f"{label} |δ| ci_low": np.minimum(low, high), f"{label} |δ| ci_high": np.maximum(low, high)}
        columns[f"{label} p"] = part.wilcoxon_p
        columns |= {f"{label} {BACKBONE_COLUMNS[c]}": part[c] for c in backbone}
        wide = wide.merge(part[keys].assign(**columns), on=keys, how="left")
    tail = [counts[c] for c in count_columns]
    wide = wide[[c for c in wide.columns if c not in tail] + tail]
    latex = wide[[c for c in wide.columns if not c.endswith(CI) and not c.endswith(" p (backbones)")]].copy()
    for col in latex.columns:
        if col.endswith("|δ|"):
            latex[col] = [_fmt_ci(row, col, 3, with_ci, brackets=True) for _, row in wide.iterrows()]
        elif col.endswith((" p", " Holm)")):
            latex[col] = latex[col].map(_fmt_p)
    return wide.round(4), latex.rename(columns={"level_from": "from", "level_to": "to"})


def analysis_targets(found: pd.Series) -> list[str]:
    """The analysis targets among ``found`` in registry.METRICS order; a target it does not
    know is an error (a table would leave it out)."""
    unknown = sorted(set(found) - set(ANALYSIS_TARGETS))
    if unknown:
        raise ValueError(
            f"target {unknown[0]!r} is not an analysis target of registry.METRICS ({', '.join(ANALYSIS_TARGETS)})"
        )
    return [target for target in ANALYSIS_TARGETS if target in set(found)]


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


def _fmt_p(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _latex_text(text: str) -> str:
    """Plain text for a LaTeX argument (pandas escapes the cells, not the caption)."""
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text


def write(
    name: str,
    csv: pd.DataFrame,
    latex: pd.DataFrame,
    csv_path: str,
    tex_path: str,
    confidence: float = CONFIDENCE,
    caption: str | None = None,
) -> None:
    """A table as CSV and LaTeX; the caption defaults to the paper table's (captions.TABLES)."""
    write_csv(csv, csv_path)
    tex = latex.to_latex(
        index=False,
        caption=_latex_text(caption or table_caption(name, confidence)),
        label=f"tab:{name}",
        na_rep="–",
        escape=True,
    )
    for text, macro in LATEX_SYMBOLS.items():
        tex = tex.replace(text, macro)
    with atomic_path(tex_path, digest=True) as tmp:
        Path(tmp).write_text(tex)


def build(
    name: str,
    cells: pd.DataFrame,
    metrics: pd.DataFrame,
    means: pd.DataFrame,
    paired: pd.DataFrame,
    confidence: float = CONFIDENCE,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    if name == "id_accuracy":
        return id_accuracy(cells, confidence)
    if name in OOD_TABLES:
        return ood_table(metrics, name, confidence)
    if name == "level_means":
        return level_means(means)
    if name == "effect_sizes":
        return effect_sizes(paired)
    raise ValueError(f"unknown paper table {name!r}")


def zero_shot_table(summary: pd.DataFrame, seeds: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(CSV, LaTeX) of protocols.zero_shot_summary: accuracies as fractions in the CSV and in % in
    LaTeX, one row per cell and shifted
    set; with several seeds per backbone (``seeds``, protocols.zero_shot_seeds' first table) one
    row per backbone and shifted set: seed means, their intervals and the seed count."""
    with_ci = seeds is not None
    if with_ci:
        csv = seeds.rename(columns=lambda c: c.replace("_ci_", " ci_")).rename(columns={"n_seeds": "seeds"})
    else:
        csv = summary.copy()
    accuracies = [c for c in csv.columns if c.split(" ")[0].endswith("_acc")]
    csv[accuracies] = csv[accuracies].round(4)
    rows = [row for _, row in _scaled(csv, accuracies, 100.0).iterrows()]

    def cells(column: str, decimals: int = 2) -> list[str]:
        return [_fmt_ci(row, column, decimals, with_ci) for row in rows]

    names = [
        f"{r.arch} {r.resolution}² {r.augmentation} " + (f"({r.seeds} seeds)" if with_ci else f"s{r.seed}")
        for r in csv.itertuples()
    ]
    layer = (lambda column: cells(column, 1)) if with_ci else (lambda column: csv[column].astype(str).tolist())
    latex = pd.DataFrame(
        {
            "backbone": names,
            "shifted set": csv.eval_set,
            "layers": csv.num_layers,
            "ZS layer": layer("zero_shot_layer"),
            "ZS acc": cells("zero_shot_acc"),
            "ZS last": cells("zero_shot_last_acc"),
            "ZS best": cells("zero_shot_oracle_acc"),
            "paper layer": layer("shifted_probe_layer"),
            "paper acc": cells("shifted_probe_acc"),
            "paper last": cells("shifted_probe_last_acc"),
        }
    )
    return csv, latex


def solver_table(comparison: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(CSV, LaTeX) of protocols.solver_comparison; with several seeds the mean difference
    carries the t-interval over the seeds' mean differences."""
    csv = comparison.round(4)
    with_ci = bool(csv.mean_difference_ci_low.notna().any())
    bounds = csv.rename(columns={f"mean_difference_ci_{b}": f"mean_difference ci_{b}" for b in ("low", "high")})
    latex = pd.DataFrame(
        {
            "solver": csv.solver + " vs " + csv.reference,
            "metric": csv.metric,
            "pairs": csv.pairs,
            "mean (ref)": csv.reference_mean.map(lambda v: _fmt(v, 3)),
            "mean (solver)": csv.solver_mean.map(lambda v: _fmt(v, 3)),
            "mean Δ": [_fmt_ci(row, "mean_difference", 3, with_ci) for _, row in bounds.iterrows()],
            "mean |Δ|": csv.mean_abs_difference.map(lambda v: _fmt(v, 3)),
            "Spearman": csv.spearman.map(lambda v: _fmt(v, 2)),
            "tunnel agreement": csv.tunnel_agreement.map(lambda v: _fmt(100 * v, 0) + "%"),
        }
    )
    return csv, latex


# Suffixes of the interval columns a table gets when a backbone has several seeds.
CI = ("ci_low", "ci_high")


def spread(frame: pd.DataFrame, keys: list[str], column: str, value: str, columns: list | None = None) -> pd.DataFrame:
    """Long to wide: one row per distinct ``keys`` (in order of first appearance, which pandas'
    pivot does not keep), one column per value of ``column`` (``columns`` order), means of
    ``value`` where several rows share one."""
    rows = frame[keys].drop_duplicates().reset_index(drop=True)
    for level in columns if columns is not None else list(dict.fromkeys(frame[column])):
        part = frame[frame[column] == level].groupby(keys, sort=False)[value].mean().rename(level).reset_index()
        rows = rows.merge(part, on=keys, how="left")
    return rows


def seed_spread(
    frame: pd.DataFrame, keys: list[str], column: str, value: str, columns: list, confidence: float
) -> tuple[pd.DataFrame, bool]:
    """``spread`` of the seed means of ``value``, and whether any row has several seeds; then
    each level's column is followed by ``LEVEL ci_low`` and ``LEVEL ci_high`` (its t-interval
    across seeds) and a last column ``seeds`` counts each row's seeds."""
    summary = seed_summary(frame, keys + [column], [value], confidence)
    with_ci = bool(len(summary) and summary.n_seeds.max() > 1)
    parts = [value, *(f"{value}_{bound}" for bound in CI)] if with_ci else [value]
    wide = {part: spread(summary, keys, column, part, columns) for part in parts}
    rows = wide[value][keys].copy()
    for level in columns:
        rows[level] = wide[value][level]
        for bound in CI if with_ci else ():
            rows[f"{level} {bound}"] = wide[f"{value}_{bound}"][level]
    if with_ci:
        rows = rows.merge(
            summary.groupby(keys, sort=False).n_seeds.max().rename("seeds").reset_index(), on=keys, how="left"
        )
    return rows, with_ci


def _with_bounds(column: str, with_ci: bool) -> list[str]:
    return [column, *(f"{column} {bound}" for bound in CI)] if with_ci else [column]


def _fmt_ci(row: pd.Series, column: str, decimals: int, with_ci: bool, brackets: bool = False) -> str:
    """A table cell: the value, and with several seeds its interval as "± half-width" (an interval
    centred on the value) or "[low, high]"; only the value where the row has one seed."""
    text = _fmt(row[column], decimals)
    low, high = (row.get(f"{column} {bound}", np.nan) for bound in CI) if with_ci else (np.nan, np.nan)
    if text == "–" or not (np.isfinite(low) and np.isfinite(high)):
        return text
    if brackets:
        return f"{text} [{low:.{decimals}f}, {high:.{decimals}f}]"
    return f"{text} ± {(high - low) / 2:.{decimals}f}"


def _fmt(value, decimals: int) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{decimals}f}"


def continual_table(
    frame: pd.DataFrame, networks: list[str], score: str, confidence: float = CONFIDENCE
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(CSV, LaTeX) laid out like the paper's Table 2: a row per configuration (in ``networks``
    order), per run setting the accuracy (a fraction in the CSV, % in LaTeX) on task 1 and task 2,
    means over seeds (with several seeds followed by their t-interval columns, and a ``seeds``
    column). LaTeX cells read "task 1 / task 2" as in the paper, each "mean ± half-interval" with
    several seeds."""
    frame = frame.assign(group=_group_labels(frame), value=frame[f"{score}_acc"])
    frame["column"] = frame.group + " task " + frame.task.astype(str)
    groups = list(dict.fromkeys(frame.sort_values(["resolution"], kind="stable").group))
    columns = [f"{g} task {t}" for g in groups for t in (1, 2)]
    order = pd.DataFrame({"network": networks})
    spread_frame, with_ci = seed_spread(frame, ["network"], "column", "value", columns, confidence)
    wide = order.merge(spread_frame, on="network", how="left").rename(columns={"network": "configuration"})
    percent = _scaled(wide, [c for c in wide.columns if c not in ("configuration", "seeds")], 100.0)
    latex = wide[["configuration"]].copy()
    for g in groups:
        latex[g] = [
            " / ".join(_fmt_ci(row, f"{g} task {t}", 2, with_ci) for t in (1, 2)) for _, row in percent.iterrows()
        ]
    return wide.round(4), latex


def _group_labels(frame: pd.DataFrame) -> pd.Series:
    """A column group per run setting: its resolution, with the arch, ID set and augmentation
    where those vary in the study."""
    varying = [k for k in ("arch", "id_dataset", "augmentation") if frame[k].nunique() > 1]

    def label(row):
        parts = [ARCHS[row.arch]["label"] if k == "arch" else str(row[k]) for k in varying]
        return " ".join([*parts, f"{row.resolution}²"])

    return frame.apply(label, axis=1)
