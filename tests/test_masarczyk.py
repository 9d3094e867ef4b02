"""Masarczyk et al.'s settings: MLP and VGG-19 backbones, the preset, and the tunnel-length figure."""

import copy
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO, snakemake, snakemake_cmd
from inmemory import embed_images, to_input
from tunnelscope.analysis import table as analysis_table
from tunnelscope.analysis.shap_slopes import shap_slopes
from tunnelscope.analysis.tunnel_length import (
    cell_table,
    rank_table,
    seed_interval,
    summary_table,
)
from tunnelscope.figures.tunnel_length import rank_figure, tunnel_length_figure
from tunnelscope.models.build import (
    build_model,
    count_parameters,
    describe,
    probe_points,
)
from tunnelscope.models.capture import layer_shapes
from tunnelscope.models.mlp import MLP
from tunnelscope.registry import ARCHS, arch_facts
from tunnelscope.study.config import Study
from tunnelscope.study.schema import ConfigError
from tunnelscope.training.backbones import paper_parameter_count

MLP_STUDY = {
    "results": "out",
    "datasets": {
        "toy": {"source": "synthetic", "family": "shapes", "classes": 4, "train_per_class": 24, "test_per_class": 8},
        "toy-glyphs": {
            "source": "synthetic",
            "family": "glyphs",
            "classes": 3,
            "train_per_class": 12,
            "test_per_class": 6,
        },
    },
    "grid": {
        "arch": ["mlp3-w16", "mlp5-w16", "mlp3-w32", "mlp5-w32"],
        "id_dataset": ["toy"],
        "resolution": [16],
        "seed": [0],
    },
    "ood_sets": ["toy-glyphs"],
    "training": {"epochs": 2, "batch_size": 32, "warmup_epochs": 0},
    "probe": {"max_iter": 50},
}


# ---------------------------------------------------------------- architectures


def test_mlp_names_give_one_cell_per_depth_and_width(schema):
    study = Study(copy.deepcopy(MLP_STUDY), schema)
    assert list(study.cells) == [
        "mlp3-w16_toy_r16_none_s0",
        "mlp5-w16_toy_r16_none_s0",
        "mlp3-w32_toy_r16_none_s0",
        "mlp5-w32_toy_r16_none_s0",
    ]
    assert study.mlp_cells() == list(study.cells)
    assert arch_facts("mlp12-w512") == {
        "label": "MLP-12 (w512)",
        "family": "mlp",
        "arch_family": "mlp",
        "depth": 12,
        "stem": 0,
        "spatial_reduction": 1.0,
        "params_m": None,
    }


@pytest.mark.parametrize(
    "name", ["mlp12", "mlp-w512", "mlp1-w512", "mlp012-w512", "mlp12-w0", "mlp12-512", "mlp12-w512x"]
)
def test_malformed_mlp_names_fail_with_the_format(schema, name):
    config = copy.deepcopy(MLP_STUDY)
    config["grid"]["arch"] = ["mlp3-w16", name]
    with pytest.raises(ConfigError) as info:
        Study(config, schema)
    assert (
        str(info.value)
        == f"grid.arch[1]: {name!r} is not a valid MLP name; write mlpDEPTH-wWIDTH, e.g. mlp12-w512 (DEPTH linear layers with the classifier, at least 2; WIDTH units per hidden layer)"
    )


@pytest.mark.parametrize(
    "edit,expected",
    [
        (
            lambda c: c.update(model={"width": 0.5}),
            "cell mlp3-w16_toy_r16_none_s0: model.width scales the channels of the CNNs and ViTs; an MLP's width is in its name",
        ),
        (
            lambda c: c.update(model={"probe_points": "paper"}),
            "cell mlp3-w16_toy_r16_none_s0: model.probe_points paper is not defined for MLPs",
        ),
        (
            lambda c: c.update(tunnel_length={"threshold": 0.9}),
            "tunnel_length.threshold: 0.9 is not one of metrics.id_start_thresholds (0.95, 0.98)",
        ),
        (
            lambda c: c.update(tunnel_length={"confidence": 1.0}),
            "tunnel_length.confidence: 1.0 is greater than or equal to the maximum of 1",
        ),
    ],
)
def test_mlp_and_tunnel_length_settings_are_checked(schema, edit, expected):
    config = copy.deepcopy(MLP_STUDY)
    edit(config)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        Study(config, schema)


def test_mlp_layers_parameters_and_probe_points():
    depth, width, classes, resolution = 5, 24, 7, 16
    model = build_model(f"mlp{depth}-w{width}", classes, resolution=resolution)
    assert isinstance(model, MLP) and len(model.hidden) == depth - 1
    inputs = 3 * resolution * resolution
    # Linear without bias (BatchNorm follows): weights, then BN weight and bias, per hidden layer.
    expected = inputs * width + 2 * width + (depth - 2) * (width * width + 2 * width) + width * classes + classes
    assert count_parameters(model) == expected
    points = probe_points(model)
    assert [p.name for p in points] == [f"hidden.{i}" for i in range(depth - 1)] and {p.side for p in points} == {
        "output"
    }
    assert set(layer_shapes(model, points, resolution).values()) == {(width,)}
    assert [p.name for p in probe_points(model, enumeration="activations")] == [p.name for p in points]
    assert (
        paper_parameter_count(f"mlp{depth}-w{width}", 1.0, resolution)
        == round((expected - width * classes - classes + width * 100 + 100) / 1e4) * 1e4
    )
    with pytest.raises(ValueError, match="width is in its name"):
        build_model("mlp4-w8", 10, width=0.5)


def test_mlp_captures_each_hidden_layer_after_relu_from_nchw_images():
    torch.manual_seed(0)
    model = build_model("mlp4-w12", 5, resolution=16).eval()
    with torch.no_grad():  # trained-looking BatchNorm statistics, so that eval mode matters
        for block in model.hidden:
            block.norm.running_mean.normal_()
            block.norm.running_var.uniform_(0.5, 2.0)
            block.norm.bias.normal_()
    images = np.random.default_rng(0).integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)
    captured = embed_images(model, probe_points(model), images, ["avg2x2"], dtype=np.float32)
    # Reference: the image flattened in (C, H, W) order by hand, every layer by hand.
    x = torch.from_numpy(to_input(torch.from_numpy(images)).numpy().reshape(6, -1).copy())
    with torch.no_grad():
        for i, block in enumerate(model.hidden):
            bn = block.norm
            x = torch.relu(
                (x @ block.linear.weight.T - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight
                + bn.bias
            )
            np.testing.assert_allclose(captured[(i + 1, "avg2x2")], x.numpy(), rtol=1e-4, atol=1e-5)
        assert (captured[(3, "avg2x2")] >= 0).all()
        np.testing.assert_allclose(
            model(to_input(torch.from_numpy(images))).numpy(), model.head(x).numpy(), rtol=1e-4, atol=1e-5
        )


def test_vgg19_is_16_probed_convs_and_a_three_layer_classifier():
    model = build_model("vgg19", 100, resolution=32)
    assert count_parameters(model) == pytest.approx(ARCHS["vgg19"]["params_m"] * 1e6, abs=5e3)
    points = probe_points(model)
    modules = dict(model.named_modules())
    assert len(points) == 16 and all(isinstance(modules[p.name], torch.nn.Conv2d) for p in points)
    assert [m.out_features for m in model.head if isinstance(m, torch.nn.Linear)] == [512, 512, 100]
    shapes = layer_shapes(model, points, 32)
    assert shapes[1] == (64, 32, 32) and shapes[16] == (512, 2, 2)  # five stages, four pools before the last
    relus = probe_points(model, enumeration="activations")
    assert len(relus) == 16 and all(p.name.startswith("features.") for p in relus)
    assert describe(model, "vgg19", 32)["depth"] == 19
    assert [m.out_channels for m in build_model("vgg19", 10, width=0.25).modules() if isinstance(m, torch.nn.Conv2d)][
        -1
    ] == 128


def test_mlp_family_enters_the_shap_analysis_without_changing_cnn_vit_codes():
    rng = np.random.default_rng(0)
    rows = [
        {
            "family": family,
            "stem": 3,
            "spatial_reduction": 1.0,
            "augmentation": "none",
            "resolution": 32,
            "id_classes": 10,
            "gamma": 1.0,
            "depth": depth,
            "ood_retained": 90 - 20 * (family == "mlp") + rng.normal(0, 1),
            "pearson": 0.5,
            "alignment": 0.1,
        }
        for family in ("cnn", "mlp")
        for depth in (8, 12, 16)
        for _ in range(4)
    ]
    table = analysis_table.check_table(pd.DataFrame(rows))
    assert list(analysis_table.encode(table).filter(like="family_").columns) == [
        "family_cnn",
        "family_vit",
        "family_mlp",
    ]
    slopes, _ = shap_slopes(table)
    assert slopes.set_index(["target", "variable"]).slope["ood_retained", "family"] < 0  # MLPs retain less, as planted
    assert "family_mlp" not in analysis_table.encode(table[table.family == "cnn"]).columns


# ---------------------------------------------------------------- the tunnel-length tables and figure


def _metrics(seeds=(0, 1, 2)):
    """A metrics table of MLP cells (two OOD rows each) and one VGG-19 cell; the 95% start is
    planted as 2 + depth // 4 + seed % 2 and the 98% one a layer later."""
    rows = []
    for depth, width, seed in ((d, w, s) for d in (4, 8, 12) for w in (64, 256) for s in seeds):
        layers = depth - 1
        start = min(layers, 1 + depth // 4 + seed % 2)
        for ood in ("a", "b"):
            rows.append(
                {
                    "arch": f"mlp{depth}-w{width}",
                    "id_dataset": "cifar10",
                    "resolution": 32,
                    "augmentation": "none",
                    "seed": seed,
                    "ood_set": ood,
                    "num_layers": layers,
                    "id_classes": 10,
                    "id_last_acc": 0.5,
                    "id_start_95": start,
                    "id_tunnel_length_95": layers - start,
                    "id_start_98": min(layers, start + 1),
                    "id_tunnel_length_98": layers - min(layers, start + 1),
                }
            )
    rows.append({**rows[0], "arch": "vgg19", "num_layers": 16})
    return pd.DataFrame(rows)


def _layer_stats(metrics):
    cells = metrics.drop_duplicates(["arch", "seed"])
    return pd.DataFrame(
        [
            {
                "arch": c.arch,
                "id_dataset": c.id_dataset,
                "resolution": c.resolution,
                "augmentation": c.augmentation,
                "seed": c.seed,
                "layer": layer,
                "numerical_rank": max(10, 200 - 40 * layer + c.seed),
            }
            for c in cells.itertuples()
            for layer in range(1, c.num_layers + 1)
        ]
    )


def test_seed_interval_is_the_student_t_interval_of_the_mean():
    assert seed_interval([1.0, 2.0, 3.0]) == pytest.approx(
        {"mean": 2.0, "ci_low": 2.0 - 4.302653 / 3**0.5, "ci_high": 2.0 + 4.302653 / 3**0.5, "n_seeds": 3}
    )
    assert seed_interval([4.0, 4.0]) == {"mean": 4.0, "ci_low": 4.0, "ci_high": 4.0, "n_seeds": 2}
    one = seed_interval([5.0])
    assert one["mean"] == 5.0 and np.isnan(one["ci_low"]) and np.isnan(one["ci_high"]) and one["n_seeds"] == 1


def test_tunnel_tables_pick_the_mlp_cells_and_the_threshold(tmp_path):
    metrics = _metrics()
    cells = cell_table(metrics, 0.98)
    assert len(cells) == 3 * 2 * 3 and set(cells.arch) == {f"mlp{d}-w{w}" for d in (4, 8, 12) for w in (64, 256)}
    one = cells.set_index(["depth", "width", "seed"]).loc[(8, 64, 1)]
    assert one.id_start == 5 and one.tunnel_length == 2 and one.tunnel_fraction == pytest.approx(2 / 7)
    summary = summary_table(cell_table(metrics, 0.95), 0.95)
    length = summary[summary.metric == "tunnel_length"].set_index(["depth", "width"])
    # Depth 12: starts 4, 5, 4 of 11 layers -> lengths 7, 6, 7.
    expected = seed_interval([7, 6, 7])
    assert length.loc[(12, 256), ["mean", "ci_low", "ci_high", "n_seeds"]].tolist() == pytest.approx(
        [expected[k] for k in ("mean", "ci_low", "ci_high", "n_seeds")]
    )
    ranks = rank_table(_layer_stats(metrics), cell_table(metrics, 0.95), 0.95)
    assert len(ranks) == sum(d - 1 for d in (4, 8, 12)) * 2 and set(ranks.n_seeds) == {3}
    assert ranks.set_index(["depth", "width", "layer"]).loc[(4, 64, 1), "mean"] == pytest.approx(161.0)
    with pytest.raises(ValueError, match="add 0.9 to metrics.id_start_thresholds"):
        cell_table(metrics, 0.9)
    with pytest.raises(ValueError, match="no MLP cells"):
        cell_table(metrics[metrics.arch == "vgg19"], 0.95)
    # The figures draw these tables: one row of panels per setting.
    tunnel_length_figure(summary, 0.95, str(tmp_path / "length.png"), str(tmp_path / "length.pdf"))
    rank_figure(ranks, 0.95, str(tmp_path / "rank.png"), str(tmp_path / "rank.pdf"))
    for name, panels in (("length", 4), ("rank", 3)):
        with Image.open(tmp_path / f"{name}.png") as img:
            assert img.size[0] > 300 * panels and np.asarray(img).std() > 0


# ---------------------------------------------------------------- the preset and the workflow


def test_masarczyk_preset_dry_runs_without_data(tmp_path, schema):
    study = Study(yaml.safe_load((REPO / "config/masarczyk.yaml").read_text()), schema)
    mlps = [study.cells[c] for c in study.mlp_cells()]
    assert {arch_facts(c.arch)["depth"] for c in mlps} == {4, 8, 12, 16} and len({c.arch for c in mlps}) == 12
    assert {c.arch for c in study.cells.values()} - {c.arch for c in mlps} == {"vgg19", "resnet34"}
    assert {c.resolution for c in study.cells.values()} == {32} and {c.seed for c in study.cells.values()} == {0, 1, 2}
    assert {c.id_dataset: study.ood_sets(c.id) for c in study.cells.values()} == {
        "cifar10": ["cifar100-10"],
        "cifar100": ["cifar10"],
    }
    assert {c.training["lr"] for c in mlps} == {0.001} and study.cells["vgg19_cifar10_r32_none_s0"].training[
        "lr"
    ] == 0.01
    cmd = snakemake_cmd(tmp_path, "-n", "--cores", "8", configfile=REPO / "config/masarczyk.yaml")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    assert (
        counts["pretrain"] == "84"
        and counts["embed"] == "168"
        and counts["tunnel_length_figure"] == counts["rank_per_layer_figure"] == "1"
    )  # in the default target


@pytest.mark.integration
def test_tiny_mlp_study_through_the_workflow(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(MLP_STUDY))
    snakemake(tmp_path, "tunnel_length")
    out = tmp_path / "out"
    table = pd.read_csv(out / "tunnel_length/tunnel_length_cells.csv")
    assert sorted(zip(table.arch, table.depth, table.width)) == [
        ("mlp3-w16", 3, 16),
        ("mlp3-w32", 3, 32),
        ("mlp5-w16", 5, 16),
        ("mlp5-w32", 5, 32),
    ]
    assert (table.num_layers == table.depth - 1).all()
    assert pd.api.types.is_integer_dtype(table.tunnel_length) and table.tunnel_length.between(0, table.depth).all()
    assert np.allclose(table.tunnel_fraction, table.tunnel_length / table.num_layers)
    # The figure's table is the metrics table's ID-rule columns, cell by cell.
    metrics = pd.read_parquet(out / "aggregate/metrics.parquet").set_index("arch")
    for row in table.itertuples():
        assert (row.id_start, row.tunnel_length) == (
            metrics.loc[row.arch, "id_start_95"],
            metrics.loc[row.arch, "id_tunnel_length_95"],
        )
    summary = pd.read_csv(out / "tunnel_length/tunnel_length.csv")
    plotted = summary[summary.metric == "tunnel_length"].set_index("width").loc[16].set_index("depth")["mean"]
    assert plotted.to_dict() == table[table.width == 16].set_index("depth").tunnel_length.astype(float).to_dict()
    ranks = pd.read_csv(out / "tunnel_length/rank_per_layer.csv")
    assert len(ranks) == 2 * (2 + 4) and (ranks["mean"] > 0).all() and (ranks["mean"] <= ranks.width).all()
    stats = pd.read_parquet(out / "aggregate/layer_stats.parquet")
    assert stats.numerical_rank.sum() == ranks["mean"].sum()
    for name in ("tunnel_length", "rank_per_layer"):
        with Image.open(out / "tunnel_length" / f"{name}.png") as img:
            assert img.size[0] > 600 and np.asarray(img).std() > 0
