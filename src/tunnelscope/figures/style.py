"""The figures' shared look: the headless backend, the seaborn theme, titles that fit their
panel, whole-number count axes and atomic PNG + PDF saving.

Every figure module imports ``plt`` and ``sns`` from here, so the Agg backend is chosen before
pyplot is first imported (a job has no display).
"""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.textpath import TextToPath  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tunnelscope.io import atomic_path  # noqa: E402

__all__ = [
    "ID_COLOUR",
    "apply_style",
    "fit_suptitle",
    "fit_title",
    "integer_axis",
    "panel_grid",
    "plt",
    "save_figure",
    "say",
    "sns",
    "wrap_text",
]

ID_COLOUR = "black"
# Panels in one row of a multi-panel figure: three at about 4 in each stay readable at page width.
MAX_PANELS_PER_ROW = 3
# A name longer than a line breaks after / or . (timm/vit_small_patch16_224.augreg_in21k_ft_in1k),
# a part still too long after _ or -.
_NAME_BREAKS = (re.compile(r"[^/.]+[/.]*|[/.]+"), re.compile(r"[^_-]+[_-]*|[_-]+"))


def apply_style():
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)


class EmptyFigureError(ValueError):
    """A figure with an axes that shows nothing: its script must say why instead (paper.say)."""


def panel_grid(n: int, panel_size: tuple[float, float], max_cols: int = MAX_PANELS_PER_ROW, **kwargs):
    """(figure, its ``n`` axes in reading order) for ``n`` panels of ``panel_size`` inches,
    wrapped into rows of at most ``max_cols``; the last row's spare slots are hidden.
    ``kwargs`` go to ``plt.subplots`` (sharey=...)."""
    n = max(n, 1)
    ncols = min(n, max_cols)
    nrows = -(-n // ncols)
    fig, grid = plt.subplots(
        nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False, **kwargs
    )
    for spare in grid.flat[n:]:
        spare.set_visible(False)
    return fig, list(grid.flat[:n])


def blank_axes(fig) -> list:
    """The visible axes of ``fig`` without a line, patch, collection, image or text of their own."""
    return [
        ax
        for ax in fig.axes
        if ax.get_visible() and not (ax.lines or ax.patches or ax.collections or ax.images or ax.texts or ax.tables)
    ]


def say(ax, text: str) -> None:
    """An axes that says why it has nothing to plot, in place of an empty plot."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, wrap_text(text, 60), ha="center", va="center", transform=ax.transAxes)


def save_figure(fig, png: str, pdf: str) -> None:
    """Write the figure as PNG (150 dpi) and PDF, each atomically, and close it. No empty figure
    anywhere: a figure that draws nothing at all is an error, and a panel of a larger figure
    left blank says "no data"."""
    blank, shown = blank_axes(fig), [ax for ax in fig.axes if ax.get_visible()]
    if shown and len(blank) == len(shown):
        plt.close(fig)
        raise EmptyFigureError(f"{png}: the figure draws nothing; say why instead (style.say)")
    for ax in blank:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    for path, kwargs in ((png, {"dpi": 150}), (pdf, {})):
        suffix = "." + path.rsplit(".", 1)[-1]
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix[1:], bbox_inches="tight", **kwargs)
    plt.close(fig)


def wrap_text(text: str, limit: float, width=len) -> str:
    """``text`` in lines no wider than ``limit`` (``width(line)``: characters by default), broken
    at spaces and, inside a word wider than a line, after ``/ .`` then ``_ -``; existing line
    breaks are kept."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            for i, piece in enumerate(_pieces(word, limit, width)):
                joined = line + (" " if i == 0 and line else "") + piece
                if line and width(joined) > limit:
                    lines.append(line)
                    joined = piece
                line = joined
        lines.append(line)
    return "\n".join(lines)


def _pieces(word: str, limit: float, width, level: int = 0) -> list[str]:
    if width(word) <= limit or level == len(_NAME_BREAKS):
        return [word]
    return [p for part in _NAME_BREAKS[level].findall(word) for p in _pieces(part, limit, width, level + 1)]


def _text_width(fontsize):
    """The width in points of a line of text at ``fontsize`` in the theme's font."""
    prop, measure = FontProperties(size=fontsize), TextToPath()
    return lambda line: measure.get_text_width_height_descent(line, prop, ismath=False)[0]


def _slot_width(ax) -> float:
    """Inches of the figure's width that the panel's grid columns take (tight_layout widens the
    panel to about this, less its tick labels)."""
    spec = ax.get_subplotspec()
    ratios = spec.get_gridspec().get_width_ratios() or [1] * spec.get_gridspec().ncols
    return ax.figure.get_figwidth() * sum(ratios[spec.colspan.start : spec.colspan.stop]) / sum(ratios)


def fit_title(ax, text: str, fontsize="medium") -> None:
    """``ax.set_title`` wrapped to 85% of the panel's slot, so that long backbone names
    (timm/vit_small_patch16_224.augreg_in21k_ft_in1k) do not run into the next panel's title."""
    ax.set_title(wrap_text(text, 0.85 * 72 * _slot_width(ax), _text_width(fontsize)), fontsize=fontsize)


def fit_suptitle(fig, text: str, fontsize="large") -> None:
    fig.suptitle(wrap_text(text, 0.95 * 72 * fig.get_figwidth(), _text_width(fontsize)), fontsize=fontsize)


def integer_axis(axis) -> None:
    """Ticks at whole numbers only: counts (layers, ranks, backbones) have no fractions."""
    axis.set_major_locator(MaxNLocator(integer=True))
