"""The figures' shared look: the headless backend, the seaborn theme and atomic PNG + PDF saving.

Every figure module imports ``plt`` and ``sns`` from here, so the Agg backend is chosen before
pyplot is first imported (a job has no display).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from tunnelscope.io import atomic_path  # noqa: E402

__all__ = ["ID_COLOUR", "apply_style", "plt", "save_figure", "sns"]

ID_COLOUR = "black"


def apply_style():
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)


def save_figure(fig, png: str, pdf: str) -> None:
    """Write the figure as PNG (150 dpi) and PDF, each atomically, and close it."""
    for path, kwargs in ((png, {"dpi": 150}), (pdf, {})):
        suffix = "." + path.rsplit(".", 1)[-1]
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix[1:], bbox_inches="tight", **kwargs)
    plt.close(fig)
