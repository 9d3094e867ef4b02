"""Figures: titles that fit their panel with long timm names, whole-number count axes, and the
strength classes in an ordered palette."""

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

from tunnelscope.figures import paper, plots  # noqa: E402
from tunnelscope.figures.style import panel_grid, wrap_text  # noqa: E402

LONG = [
    "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
    "timm/convnextv2_base.fcmae_ft_in22k_in1k_384",
    "torchvision/resnet50",
    "vggm11",
]


def curves(archs, layers=12) -> pd.DataFrame:
    rows = []
    for arch, (name, role) in itertools.product(
        archs, [("imagenet100", "id"), ("stl10", "ood"), ("toy-glyphs", "ood")]
    ):
        for layer in range(1, layers + 1):
            acc = 0.3 + 0.6 * layer / layers if role == "id" else 0.8 - 0.5 * abs(layer / layers - 0.4)
            rows.append(
                {
                    "arch": arch,
                    "id_dataset": "imagenet100",
                    "resolution": 224,
                    "augmentation": "rrc_flip",
                    "seed": 0,
                    "eval_set": name,
                    "role": role,
                    "layer": layer,
                    "relative_depth": layer / layers,
                    "test_acc": acc,
                    "layer_name": f"blocks.{layer - 1}.mlp",
                    "n_test": 500,
                    "n_classes": 100 if role == "id" else 10,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture()
def drawn(monkeypatch):
    """The figures the drawing functions would save, drawn (so that text has its extent)."""
    figures = []

    def keep(fig, png, pdf):
        fig.canvas.draw()
        figures.append(fig)

    for module in (plots, paper):
        monkeypatch.setattr(module, "save_figure", keep)
    yield figures
    for fig in figures:
        plt.close(fig)


def test_wrap_text_breaks_long_names_after_separators_and_keeps_every_character():
    text = "timm/vit_small_patch16_224.augreg_in21k_ft_in1k imagenet100 224px aug=rrc_flip 3 seeds"
    wrapped = wrap_text(text, 30)
    assert wrapped.split("\n")[:2] == ["timm/vit_small_patch16_224.", "augreg_in21k_ft_in1k"]
    assert all(len(line) <= 30 for line in wrapped.split("\n"))
    assert "".join(wrapped.split()) == "".join(text.split())
    assert wrap_text("vggm11 toy 32px aug=none 3 seeds", 40) == "vggm11 toy 32px aug=none 3 seeds"


def test_overview_titles_do_not_run_into_each_other(drawn):
    plots.overview_figure(curves(LONG), "o.png", "o.pdf")
    fig = drawn[-1]
    titles = [ax.title.get_window_extent() for ax in fig.axes if ax.get_visible()]
    assert len(titles) == 4 and "\n" in fig.axes[0].get_title()
    for left, right in itertools.pairwise(titles):
        assert left.x1 < right.x0, "a panel title runs into the next one"


def test_layer_axes_tick_whole_numbers_only(drawn):
    probes = curves(LONG[1:2], layers=37)
    plots.cell_figure(
        probes, "timm-convnextv2_base.fcmae_ft_in22k_in1k_384_imagenet100_r224_rrc_flip_s0", "c.png", "c.pdf"
    )
    for ax in drawn[-1].axes:
        ticks = ax.get_xticks()
        assert len(ticks) <= 12 and np.array_equal(ticks, np.round(ticks))  # not one tick per layer


def test_cell_figure_names_modules_where_they_fit_with_chance_and_intervals(drawn):
    plots.cell_figure(curves(LONG[3:], layers=12), "vggm11_imagenet100_r224_rrc_flip_s0", "c.png", "c.pdf")
    left = drawn[-1].axes[0]
    labels = [t.get_text() for t in left.get_xticklabels()]
    assert labels[0] == "1 blocks.0.mlp" and len(labels) == 12
    chance = sorted(
        {
            round(line.get_ydata()[0], 6)
            for line in left.get_lines()
            if line.get_linestyle() == ":" and len(line.get_ydata())
        }
    )
    assert chance == [1.0, 10.0]  # 1 / 100 ID classes, 1 / 10 for both OOD sets, in %
    assert len(left.collections) == 3  # an interval band per eval set


def test_tsne_legend_names_the_classes(drawn):
    coords = pd.DataFrame(
        {
            "layer": np.repeat([1, 2], 4),
            "layer_name": np.repeat(["conv1", "fc"], 4),
            "label": [0, 0, 1, 1] * 2,
            "class_name": ["cat", "cat", "dog", "dog"] * 2,
            "x": np.arange(8.0),
            "y": np.arange(8.0) % 3,
        }
    )
    stats = pd.DataFrame({"layer": [1, 2], "numerical_rank": [3, 2]})
    plots.tsne_figure(coords, stats, "cell", "t.png", "t.pdf")
    assert [t.get_text() for t in drawn[-1].legends[0].get_texts()] == ["cat", "dog"]
    plots.tsne_figure(coords.drop(columns="class_name"), stats, "cell", "t.png", "t.pdf")  # an older table
    assert [t.get_text() for t in drawn[-1].legends[0].get_texts()] == ["class 0", "class 1"]


def test_numerical_rank_axes_are_whole_numbers(drawn):
    stats = curves(LONG[:2], layers=6)
    stats = stats[stats.role == "id"].assign(
        numerical_rank=lambda t: 3.0 + t.layer % 4,
        rankme=lambda t: t.test_acc,
        nc1=lambda t: t.test_acc,
        cka_to_last=0.5,
    )
    paper.layer_stats_figure(stats, "s.png", "s.pdf")
    ticks = drawn[-1].axes[0].get_yticks()
    assert np.array_equal(ticks, np.round(ticks))


def test_strength_classes_darken_in_order(drawn):
    retained = {"negligible": 97.0, "weak": 92.0, "medium": 85.0, "strong": 60.0}
    metrics = pd.DataFrame(
        [
            {
                "arch": f"net{i}",
                "id_dataset": "toy",
                "resolution": 32,
                "augmentation": "none",
                "seed": 0,
                "ood_set": "a",
                "ood_index": 1,
                "ood_retained": value,
                "pearson": 0.5,
                "alignment": 0.2,
                "ood_last_acc": 0.5,
                "tunnel": True,
            }
            for i, value in enumerate(retained.values())
        ]
    )
    paper.strength_histogram(metrics, "h.png", "h.pdf")
    ax = drawn[-1].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(retained)
    lightness = [np.dot(to_rgb(bar.get_facecolor()), [0.299, 0.587, 0.114]) for bar in ax.patches]
    assert lightness == sorted(lightness, reverse=True)  # negligible lightest, strong darkest
    ticks = ax.get_yticks()
    assert np.array_equal(ticks, np.round(ticks))


def test_curves_by_variable_averages_curves_of_different_depths_on_one_grid(drawn):
    """A 10-point curve rising with depth and a 16-point one falling: on the union of their depths
    the mean would jump between the two at every other point; on one grid it is their mean."""
    rising = curves(["vggm11"], layers=10).assign(test_acc=lambda t: 0.5 + 0.5 * t.relative_depth)
    falling = curves(["resnet18"], layers=16).assign(test_acc=lambda t: 1.0 - 0.5 * t.relative_depth)
    both = pd.concat([rising, falling])
    both = pd.concat([both, both.assign(augmentation="none", test_acc=lambda t: 0.9 * t.test_acc)])
    metrics = (
        both[list(paper.CELL_COLUMNS)]
        .drop_duplicates()
        .assign(depth=lambda t: t.arch.map({"vggm11": 11, "resnet18": 18}), stem=3, spatial_reduction=0.5)
        .assign(family="cnn", resolution=224, id_classes=100, gamma=1.0)
    )
    assert paper.curves_by_variable(both, metrics, "v.png", "v.pdf") == ["augmentation", "depth"]
    grid = np.linspace(0.1, 1.0, 16)  # from the 10-point curve's first depth, as many points as the longer
    expected = ((0.5 + 0.5 * grid) + (1.0 - 0.5 * grid) / (1.0 - 0.5 / 16)) / 2  # each curve over its own max
    lines = [line for line in drawn[-1].axes[0].lines if len(line.get_xdata()) > 1]
    assert len(lines) == 2  # one per augmentation level, each the mean of both backbones
    for line in lines:
        assert np.allclose(line.get_xdata(), grid) and np.allclose(line.get_ydata(), expected)
    same_depth = curves(LONG[:2], layers=12)
    assert np.allclose(paper.depth_grid(same_depth), np.arange(1, 13) / 12)  # shared depths stay as they are


@pytest.mark.parametrize(("n", "max_cols", "shape"), [(1, 3, (1, 1)), (4, 2, (2, 2)), (5, 3, (2, 3)), (6, 3, (2, 3))])
def test_panel_grid_wraps_wide_figures_into_rows(n, max_cols, shape):
    fig, axes = panel_grid(n, (4.0, 3.0), max_cols=max_cols, sharey=True)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == n and visible == axes  # reading order; the last row's spare slots hidden
    assert tuple(fig.get_size_inches()) == (4.0 * shape[1], 3.0 * shape[0])
    plt.close(fig)


def test_layer_stats_panels_stand_two_by_two(tmp_path):
    stats = pd.DataFrame(
        [
            {"arch": "vggm11", "id_dataset": "toy", "resolution": 32, "augmentation": "none", "seed": 0, "layer": layer}
            | {c: float(layer + 1) for c in paper.LAYER_STATS}
            for layer in range(4)
        ]
    )
    paper.layer_stats_figure(stats, str(tmp_path / "s.png"), str(tmp_path / "s.pdf"))
    width, height = plt.imread(tmp_path / "s.png").shape[1::-1]
    assert width < 1.5 * height  # was one row of four, about 4.7 times as wide as high
