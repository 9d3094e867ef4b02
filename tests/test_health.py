"""Training health (metrics.health) and the lean study (Study.builds / absent_parts)."""

import base64
import copy
import io
import math
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib import pyplot as plt

from conftest import TINY
from tunnelscope.analysis import comparisons as analysis
from tunnelscope.figures import paper, style
from tunnelscope.metrics.health import (
    PUBLISHED,
    chance_threshold,
    health_lines,
    loss_problem,
    study_rows,
    training_health,
)
from tunnelscope.study.config import Study

CELL = {"arch": "vggm11", "id_dataset": "toy", "resolution": 32, "augmentation": "none", "seed": 0}


def log(*losses):
    return pd.DataFrame({"epoch": range(1, len(losses) + 1), "train_loss": losses})


def info(test_acc, id_classes=10):
    return {**CELL, "id_classes": id_classes, "test_acc": test_acc}


def test_chance_threshold_is_a_fraction_of_the_way_to_perfect():
    assert chance_threshold(10, 0.15) == pytest.approx(0.235)
    assert chance_threshold(100, 0.15) == pytest.approx(0.1585)
    assert chance_threshold(4, 0.0) == 0.25


@pytest.mark.parametrize("accuracy", [0.17, 0.22])  # the EfficientNet-B0 at lr 0.01 on CIFAR-10
def test_a_backbone_near_chance_is_untrained(accuracy):
    health = training_health(info(accuracy), log(2.3, 2.1, 2.0), {"chance_margin": 0.15, "loss": True})
    assert health["trained"] is False
    assert f"ID test accuracy {accuracy:.3f} is below 0.235" in health["untrained_reason"]
    assert "chance 0.100" in health["untrained_reason"]


def test_a_backbone_that_learned_is_trained():
    assert training_health(info(0.6), log(2.3, 1.2, 0.8)) == {"trained": True, "untrained_reason": ""}
    # the margin is a setting: at 0.6 of the way a 0.6 accuracy no longer passes
    assert not training_health(info(0.6), log(2.3, 1.2), {"chance_margin": 0.6, "loss": True})["trained"]


@pytest.mark.parametrize(
    "losses,reason",
    [
        ((2.3, 1.9, 2.5), "train loss diverged: last epoch 2.5 > first 2.3"),
        ((2.3, 2.3, 2.3), "train loss never fell below its first epoch's 2.3"),
        ((2.3, 2.4, 2.3), "train loss never fell below its first epoch's 2.3"),
        ((2.3, float("nan"), 1.0), "train loss not finite in epoch 2"),
        ((2.3, math.inf), "train loss not finite in epoch 2"),
    ],
)
def test_a_loss_that_diverged_or_never_fell_is_untrained(losses, reason):
    assert loss_problem(losses) == reason
    health = training_health(info(0.9), log(*losses))
    assert health == {"trained": False, "untrained_reason": reason}
    assert training_health(info(0.9), log(*losses), {"chance_margin": 0.15, "loss": False})["trained"]


def test_one_epoch_says_nothing_about_the_loss_and_reasons_add_up():
    assert loss_problem([2.3]) == ""
    both = training_health(info(0.1), log(2.3, 2.4))
    assert not both["trained"] and both["untrained_reason"].count("; ") == 1


def test_published_weights_count_as_trained():
    published = {**CELL, "id_classes": 1000, "test_acc": None}
    assert training_health(published, pd.DataFrame(columns=["epoch", "train_loss"])) == {
        "trained": True,
        "untrained_reason": PUBLISHED,
    }


def flagged(table, untrained_augmentation="rrc_flip"):
    """``table`` with a trained flag: the cells at ``untrained_augmentation`` did not train."""
    bad = table.augmentation == untrained_augmentation
    return table.assign(
        arch="vggm11",
        id_dataset="toy",
        seed=0,
        trained=~bad,
        untrained_reason=np.where(bad, "ID test accuracy 0.250 is below 0.363", ""),
    )


def test_study_rows_leave_out_untrained_cells_and_name_them():
    from test_analysis import planted_table

    table = flagged(planted_table())
    kept, left_out = study_rows(table)
    assert kept.trained.all() and len(kept) == (table.augmentation == "none").sum()
    assert left_out == [f"vggm11_toy_r{r}_rrc_flip_s0" for r in (32, 64, 128)]
    everything, none = study_rows(table, include_untrained=True)
    assert len(everything) == len(table) and none == []
    assert study_rows(table.drop(columns="trained"))[1] == []  # a table from elsewhere: all rows


def test_the_analysis_leaves_a_planted_untrained_cell_out(tmp_path, caplog):
    """Untrained rows change no analysis table; with include_untrained they are back."""
    from test_analysis import planted_table

    table = planted_table()
    # an untrained twin of one backbone: retained 20 %, at a resolution no trained cell has
    twin = table[(table.resolution == 32) & (table.augmentation == "none")].assign(resolution=16, ood_retained=20.0)
    planted = pd.concat([flagged(table, "-"), twin.assign(trained=False, untrained_reason="x")], ignore_index=True)
    planted = planted.assign(arch="vggm11", id_dataset="toy", seed=0)
    settings = {"bootstrap_resamples": 100}
    with caplog.at_level("WARNING", logger="tunnelscope.analysis"):
        left = analysis.analyze(planted, tmp_path / "left", settings)
    assert "left out 1 untrained cell(s)" in caplog.text and "vggm11_toy_r16_none_s0" in caplog.text
    clean = analysis.analyze(flagged(table, "-"), tmp_path / "clean", settings)
    for name in ("paired_tests", "level_means", "shap_slopes"):
        pd.testing.assert_frame_equal(left[name], clean[name], obj=name)
    kept = analysis.analyze(planted, tmp_path / "kept", {**settings, "include_untrained": True})
    assert 16 in set(kept["level_means"].level) and 16 not in set(left["level_means"].level)
    assert pd.read_csv(tmp_path / "left/shap_fit.csv").n.eq(len(table)).all()


def test_health_lines_say_which_cells_and_what_happens_to_them():
    cells = pd.DataFrame(
        [
            {**CELL, "trained": True, "untrained_reason": ""},
            {**CELL, "augmentation": "rrc_flip", "trained": False, "untrained_reason": "ID test accuracy low"},
        ]
    )
    lines = health_lines(cells)
    assert lines[0].startswith("Training health: 1 of 2 cells did not train") and "include_untrained: false" in lines[0]
    assert lines[1:] == ["vggm11_toy_r32_rrc_flip_s0: ID test accuracy low"]
    assert "include_untrained: true" in health_lines(cells, True)[0]
    assert health_lines(cells.iloc[:1]) == [
        "Training health: the one cell trained (docs/protocol.md, Training health)."
    ]


# ---------------------------------------------------------------- the lean study


def one_cell():
    config = copy.deepcopy(TINY)
    config["grid"]["augmentation"] = ["none"]
    config["ood_sets"] = ["toy-glyphs"]
    return config


def test_a_one_model_study_builds_no_study_level_part_and_says_why(schema):
    study = Study(one_cell(), schema)
    assert study.varying() == [] and study.backbones() == 1 and study.metric_rows() == 1
    assert not any(study.builds(p) for p in ("analysis", "shap_figure", "strength_histogram"))
    assert study.absent_parts() == [
        "Not built: SHAP slopes, paired tests, level means (Tables 1, 12, 13) and curves by variable: "
        "no cell variable other than the seed has two levels among the one cell.",
        "Not built: the tunnel-strength histogram: the study has one backbone.",
    ]


def test_seeds_alone_are_no_variation_and_two_rows_fit_no_shap(schema):
    seeds = one_cell()
    seeds["grid"]["seed"] = [0, 1]
    study = Study(seeds, schema)
    assert study.varying() == [] and study.backbones() == 1 and not study.builds("analysis")
    two = one_cell()
    two["grid"]["augmentation"] = ["none", "rrc_flip"]
    study = Study(two, schema)
    assert study.varying() == ["augmentation"] and study.builds("analysis") and study.builds("strength_histogram")
    assert not study.builds("shap_figure")
    assert study.absent_parts() == [
        "Not built: the SHAP slopes figure: SHAP needs 3 or more (cell, OOD set) rows and the grid has 2."
    ]
    assert Study(copy.deepcopy(TINY), schema).absent_parts() == []


def test_health_settings_reach_only_the_rules_that_read_them(schema):
    config = one_cell()
    config["metrics"] = {"health": {"chance_margin": 0.3}}
    study = Study(config, schema)
    cell = next(iter(study.cells))
    assert "health" not in study.metrics_params(cell)  # a new margin reruns no tunnel metric
    assert study.health_params() == {"chance_margin": 0.3, "loss": True}
    assert study.untrained_params() == {"include_untrained": False}
    assert study.analysis_params()["include_untrained"] is False


# ---------------------------------------------------------------- no empty figure


def drawn(png):
    """Whether a PNG shows anything besides its background."""
    pixels = np.asarray(plt.imread(png))[..., :3]
    return bool((pixels < 0.9).any())


def test_a_figure_that_draws_nothing_is_an_error(tmp_path):
    fig, ax = plt.subplots()
    with pytest.raises(style.EmptyFigureError, match="draws nothing"):
        style.save_figure(fig, str(tmp_path / "a.png"), str(tmp_path / "a.pdf"))
    fig, (left, right) = plt.subplots(1, 2)
    left.plot([0, 1], [0, 1])
    style.save_figure(fig, str(tmp_path / "b.png"), str(tmp_path / "b.pdf"))  # the blank panel says "no data"
    assert drawn(tmp_path / "b.png")


def test_summary_figures_say_why_they_have_nothing_to_show(tmp_path):
    slopes = pd.DataFrame(
        {"target": ["pearson"], "variable": ["depth"], "slope": [np.nan], "note": ["not estimable: fewer than 3 rows"]}
    )
    paper.shap_bars(slopes, str(tmp_path / "s.png"), str(tmp_path / "s.pdf"))
    paper.strength_histogram(
        pd.DataFrame(columns=["ood_retained", *CELL]), str(tmp_path / "h.png"), str(tmp_path / "h.pdf")
    )
    for name in ("s", "h"):
        assert drawn(tmp_path / f"{name}.png")


# ---------------------------------------------------------------- through the workflow


@pytest.mark.integration
def test_a_one_model_study_of_an_untrained_cell(tmp_path, schema):
    """One cell, one OOD set, trained at lr 1e-9 (so it stays at chance): no study-level job is
    planned, the cell is flagged and left out of Tables 4-7, every figure draws something, and
    the page and the Snakemake report say what is absent and why."""
    import subprocess

    import yaml

    from conftest import planned_jobs, snakemake, snakemake_cmd

    config = one_cell()
    config["training"] = {**config["training"], "lr": 1e-9}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    cell = "vggm11_toy_r32_none_s0"
    planned = {rule for rule, _ in planned_jobs(snakemake(tmp_path, "-n"))}
    assert planned.isdisjoint(
        {"analysis", "shap_slopes_figure", "strength_histogram_figure", "curves_by_variable_figure"}
    )
    snakemake(tmp_path, "paper")
    out = tmp_path / "out"
    tables = {p.stem for p in (out / "paper/tables").glob("*.csv")}
    # Tables 4-7 and 11, and the answer of a one-model study: its best layers
    assert tables == {"id_accuracy", "ood_accuracy", "ood_retained", "pearson", "alignment", "best_layers"}
    assert not (out / "analysis").exists()
    cells, metrics = (
        pd.read_parquet(out / "aggregate/cells.parquet"),
        pd.read_parquet(out / "aggregate/metrics.parquet"),
    )
    assert not cells.trained.any() and not metrics.trained.any()
    assert cells.untrained_reason[0].startswith("ID test accuracy") and "below 0.362" in cells.untrained_reason[0]
    assert "did not train" in (out / f"logs/cell_metrics/{cell}.log").read_text()
    assert len(pd.read_csv(out / "paper/tables/ood_retained.csv")) == 0  # left out of Tables 4-7
    assert f"left out 1 untrained cell(s): {cell}" in (out / "logs/paper_table/ood_retained.log").read_text()
    assert len(pd.read_csv(out / "paper/tables/id_accuracy.csv")) == 1  # Table 11 shows it
    pngs = sorted(out.rglob("*.png"))
    # the study-level figures it can fill, and the cell's own (the page shows what the report shows)
    assert {p.name for p in pngs} == {
        "tunnel_curves.png",
        "layer_stats.png",
        "best_layers.png",
        "figure.png",
        "tsne.png",
    }
    assert all(drawn(p) for p in pngs)
    page = (out / "paper/index.html").read_text()
    assert "best layers (table)" in page  # the answer, with its intervals
    assert "Training health: 1 of 1 cells did not train" in page and f"{cell}: ID test accuracy" in page
    for line in Study(config, schema).absent_parts():
        assert line in page
    report = tmp_path / "report.html"
    result = subprocess.run(snakemake_cmd(tmp_path, "--report", str(report), "paper"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    text = report.read_text()
    assert "Not built: the tunnel-strength histogram: the study has one backbone." in text
    assert "filename=best_layers.csv;base64," in text  # the best-layer table is a report item
    # the cells table is a report item (category "Training health"), embedded as base64
    embedded = re.search(r"filename=cells\.csv;base64,([A-Za-z0-9+/=]+)", text).group(1)
    shown = pd.read_csv(io.BytesIO(base64.b64decode(embedded)))
    assert not shown.trained.any() and shown.untrained_reason[0] == cells.untrained_reason[0]
