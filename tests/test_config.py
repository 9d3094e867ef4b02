import copy
from pathlib import Path

import pytest

from conftest import REPO
from tunnelscope.registry import ARCHS
from tunnelscope.study.checks import validate
from tunnelscope.study.config import Study
from tunnelscope.study.schema import ConfigError


def test_default_config_has_at_least_four_cells_and_two_ood_sets(default_config, schema):
    study = Study(default_config, schema)
    assert len(study.cells) >= 4
    assert len(default_config["ood_sets"]) >= 2
    assert all(c.arch.startswith("vggm") for c in study.cells.values())


def test_schema_architectures_match_the_registry(schema):
    assert schema["$defs"]["grid_block"]["properties"]["arch"]["items"]["anyOf"][0]["enum"] == list(ARCHS)


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda c: c.update(colour="red"), "unknown key 'colour'"),
        (lambda c: c["training"].update(epoch=3), "training: unknown key 'epoch'"),
        (lambda c: c["grid"].update(arch=["resnet99"]), "grid.arch[0]: 'resnet99' is not one of"),
        (lambda c: c.update(ood_sets=["imagenet-r"]), "ood_sets[0]: unknown dataset 'imagenet-r'"),
        (lambda c: c["grid"].update(id_dataset=["nope"]), "grid.id_dataset[0]: unknown dataset 'nope'"),
        (lambda c: c["grid"].update(resolution=[0]), "grid.resolution[0]"),
        (lambda c: c["training"].update(lr=-1.0), "training.lr"),
        (lambda c: c["grid"].update(augmentation=[]), "grid.augmentation"),
        (lambda c: c["datasets"]["shapes"].update(family="blobs"), "datasets.shapes.family: 'blobs'"),
        (
            lambda c: c.update(overrides=[{"where": {"resolution": 99}, "training": {"epochs": 1}}]),
            "overrides[0].where.resolution: 99 matches no cell",
        ),
        (lambda c: c["grid"].update(resolution=["32"]), "grid.resolution[0]: '32' is not of type 'integer'"),
        (lambda c: c["grid"].update(resolution=[32, 32]), "grid.resolution: [32, 32] has non-unique elements"),
        (lambda c: c["grid"].update(seed=[-1]), "grid.seed[0]: -1 is less than the minimum of 0"),
        (lambda c: c["grid"].pop("arch"), "grid: 'arch' is a required property"),
        (lambda c: c["grid"].update(arch=[]), "grid.arch: [] should be non-empty"),
        (lambda c: c.update(grid=[]), "grid: [] should be non-empty"),
        (lambda c: c.update(datasets={}), "datasets: {} should be non-empty"),
        (lambda c: c["training"].update(epochs=0), "training.epochs: 0 is less than the minimum of 1"),
        (lambda c: c["training"].update(batch_size=12.5), "training.batch_size: 12.5 is not of type 'integer'"),
        (
            lambda c: c["training"].update(val_fraction=1.0),
            "training.val_fraction: 1.0 is greater than or equal to the maximum of 1",
        ),
        (
            lambda c: c["training"].update(label_smoothing=2),
            "training.label_smoothing: 2 is greater than the maximum of 1",
        ),
        (lambda c: c["model"].update(width=0), "model.width: 0 is less than or equal to the minimum of 0"),
        (lambda c: c["embed"].update(pooling="max"), "embed.pooling: 'max' is not one of"),
        (lambda c: c["embed"].update(dtype="int8"), "embed.dtype: 'int8' is not one of float16, float32"),
        (lambda c: c["probe"].update(solver="svm"), "probe.solver: 'svm' is not one of lbfgs, sklearn, paper"),
        (
            lambda c: c["probe"].update(solver=["lbfgs", "svm"]),
            "probe.solver[1]: 'svm' is not one of lbfgs, sklearn, paper",
        ),
        (
            lambda c: c["probe"].update(solver=["lbfgs", "lbfgs"]),
            "probe.solver: ['lbfgs', 'lbfgs'] has non-unique elements",
        ),
        (lambda c: c["probe"].update(l2_grid=[]), "probe.l2_grid: [] should be non-empty"),
        (lambda c: c["probe"].update(pooling="avg1x1"), "probe.pooling: 'avg1x1' is not written by embed.pooling"),
        (
            lambda c: c["datasets"].update(real={"source": "imagefolder"}),
            "datasets.real: 'root' is a required property",
        ),
        (
            lambda c: c["datasets"].update(real={"source": "webdataset", "root": "x"}),
            "datasets.real.source: 'webdataset' is not one of",
        ),
        (
            lambda c: c["datasets"]["shapes"].update(classes=1),
            "datasets.shapes.classes: 1 is less than the minimum of 2",
        ),
        (
            lambda c: c["datasets"].update({"pacs_sketch": c["datasets"]["digits"]}),
            "datasets: 'pacs_sketch' is not a valid name: dataset names are letters, digits and hyphens, starting with a letter; no underscores or other signs: write pacs-sketch",
        ),
        (
            lambda c: c.update(pretrained={"r50_sup": {"arch": "timm/resnet50", "download": True}}),
            "pretrained: 'r50_sup' is not a valid name: pretrained names are letters, digits and hyphens",
        ),
        (
            lambda c: c["ood_sets"].append("shapes"),
            "ood_sets[4]: 'shapes' is the ID set of grid.id_dataset[0]; an OOD set must differ from the ID set",
        ),
        (
            lambda c: c.update(grid=dict(c["grid"], ood_sets=["digits", "shapes"])),
            "grid.ood_sets[1]: 'shapes' is the ID set of grid.id_dataset[0]",
        ),
        (
            lambda c: (
                c["datasets"].update(again=dict(c["datasets"]["shapes"], mean=[0.5] * 3, std=[0.2] * 3)),
                c["ood_sets"].append("again"),
            ),
            "ood_sets[4]: 'again' holds the same test images as 'shapes', the ID set of grid.id_dataset[0]",
        ),
        (lambda c: c.update(results="/"), "results: / is the filesystem root"),
        (lambda c: c.update(results=str(Path.home())), f"results: {Path.home()} is the home directory"),
        (lambda c: c.update(results="~"), "is the home directory"),
        (
            lambda c: c.update(results=str(REPO)),
            f"results: {REPO} is a workflow's directory, such as the repository root",
        ),
        (lambda c: c.update(ood_sets="digits"), "ood_sets: 'digits' is not of type 'array'"),
        (
            lambda c: (
                c["compute"].update(precision="fp8") if "compute" in c else c.update(compute={"precision": "fp8"})
            ),
            "compute.precision: 'fp8' is not one of auto, fp32, bf16",
        ),
        (lambda c: c.update(overrides=[{"training": {"epochs": 1}}]), "overrides[0]: 'where' is a required property"),
        (lambda c: c.update(overrides=[{"where": {"colour": "red"}}]), "overrides[0].where: unknown key 'colour'"),
        (
            lambda c: c.update(overrides=[{"where": {"resolution": [32, 99]}, "training": {"epochs": 1}}]),
            "overrides[0].where.resolution: 99 matches no cell",
        ),
        (
            lambda c: c.update(overrides=[{"where": {"resolution": 32}, "probe": {"paper": {"epoch": 3}}}]),
            "overrides[0].probe.paper: unknown key 'epoch'",
        ),
        (
            lambda c: c["training"].update(checkpoint="best"),
            "training.checkpoint: 'best' is not one of last, best_val, best_test",
        ),
        (
            lambda c: c["training"].update(schedule_step="step"),
            "training.schedule_step: 'step' is not one of batch, epoch",
        ),
        (
            lambda c: c.update(probe={"paper": {"report": "best"}}),
            "probe.paper.report: 'best' is not one of last, best_test",
        ),
        (lambda c: c["datasets"]["digits"].update(mean=[0.5, 0.5, 0.5]), "datasets.digits: mean is given without std"),
        (
            lambda c: c["model"].update(preprocessing="cifar"),
            "model.preprocessing: 'cifar' is not one of dataset, imagenet",
        ),
        (
            lambda c: c.update(analysis={"comparisons": [{"name": "r", "variable": "resolution", "levels": [32, 96]}]}),
            "analysis.comparisons[0].levels[1]: 96 is not a resolution of any cell; grid levels: 32",
        ),
        (
            lambda c: c.update(analysis={"comparisons": [{"name": "r", "variable": "colour"}]}),
            "analysis.comparisons[0].variable: 'colour' is not one of",
        ),
        (
            lambda c: c.update(
                analysis={"comparisons": [{"name": "a", "variable": "depth", "where": {"arch": ["vggm99"]}}]}
            ),
            "analysis.comparisons[0].where.arch[0]: 'vggm99' matches no cell",
        ),
        (
            lambda c: c.update(analysis={"comparisons": [{"name": "a", "variable": "stem", "pairs": [[3, 7]]}]}),
            "analysis.comparisons[0].pairs[0][1]: 7 is not a stem of any cell",
        ),
        (
            lambda c: c.update(
                analysis={
                    "comparisons": [{"name": "a", "variable": "augmentation"}, {"name": "a", "variable": "resolution"}]
                }
            ),
            "analysis.comparisons[1].name: 'a' is used by an earlier comparison",
        ),
        (
            lambda c: c.update(
                analysis={"comparisons": [{"name": "a", "variable": "augmentation", "match": ["colour"]}]}
            ),
            "analysis.comparisons[0].match[0]: 'colour' is not one of",
        ),
        (
            lambda c: c.update(analysis={"shap_slope_normalisation": "l2"}),
            "analysis.shap_slope_normalisation: 'l2' is not one of none, l1",
        ),
        (
            lambda c: c.update(analysis={"seed_confidence": 95}),
            "analysis.seed_confidence: 95 is greater than or equal to the maximum of 1",
        ),
    ],
)
def test_bad_configs_give_one_line_naming_the_key(default_config, schema, edit, expected):
    config = copy.deepcopy(default_config)
    edit(config)
    with pytest.raises(ConfigError) as info:
        validate(config, schema)
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_results_inside_another_studys_results_or_above_home_are_refused(default_config, schema, tmp_path, monkeypatch):
    other = tmp_path / "results-other"
    (other / "prepared" / "shapes" / "r32").mkdir(parents=True)
    (other / "prepared" / "shapes" / "r32" / "store.json").write_text("{}")
    for inside in (other / "prepared" / "shapes", other / "mine"):
        with pytest.raises(ConfigError) as info:
            validate(dict(default_config, results=str(inside)), schema)
        assert str(info.value).startswith(
            f"results: {inside} is inside {other}, the results directory of another study"
        )
        assert "prepared/shapes/r32/store.json" in str(info.value) and "\n" not in str(info.value)
    cells = tmp_path / "results-cells"
    (cells / "cells" / "vggm11_shapes_r32_none_s0").mkdir(parents=True)
    (cells / "cells" / "vggm11_shapes_r32_none_s0" / "cell.json").write_text("{}")
    with pytest.raises(
        ConfigError, match="the results directory of another study .it holds cells/vggm11_shapes_r32_none_s0/cell.json"
    ):
        validate(dict(default_config, results=str(cells / "cells" / "x")), schema)
    # a study's own results directory, and a sibling of another's, are its own to use
    assert validate(dict(default_config, results=str(other)), schema)["results"] == str(other)
    validate(dict(default_config, results=str(tmp_path / "results-new")), schema)
    monkeypatch.setenv("HOME", str(tmp_path / "users" / "me"))
    with pytest.raises(ConfigError, match=f"results: {tmp_path / 'users'} is above the home directory"):
        validate(dict(default_config, results=str(tmp_path / "users")), schema)
    with pytest.raises(ConfigError, match=f"results: {tmp_path / 'users' / 'me'} is the home directory"):
        validate(dict(default_config, results="~"), schema)
    assert validate(dict(default_config, results="~/study"), schema)["results"] == str(tmp_path / "users/me/study")


def test_ood_sets_of_the_id_sets_files_with_other_classes_are_allowed(default_config, schema, tmp_path):
    """Sets sharing a source and root but not their classes hold other images (near OOD)."""
    default_config["datasets"] = {
        "pets-a": {"source": "imagefolder", "root": str(tmp_path), "classes": ["a", "b"]},
        "pets-b": {"source": "imagefolder", "root": str(tmp_path), "classes": ["c", "d"]},
        "pets-a-thin": {"source": "imagefolder", "root": str(tmp_path) + "/", "classes": ["a", "b"], "per_class": 5},
    }
    default_config["grid"]["id_dataset"] = ["pets-a"]
    default_config["ood_sets"] = ["pets-b"]
    Study(default_config, schema)
    default_config["ood_sets"] = ["pets-b", "pets-a-thin"]  # per_class thins the train split only
    with pytest.raises(ConfigError, match="ood_sets.1.: 'pets-a-thin' holds the same test images as 'pets-a'"):
        Study(default_config, schema)


def test_every_source_gets_its_schema_defaults(default_config, schema):
    """A file source's defaults were never filled: NINCO, ImageNet-R and layout: single trees
    then failed in prepare with KeyError 'test_fraction', then 'seed'."""
    default_config["datasets"].update(
        ninco={"source": "ninco", "root": "data/ninco"},
        tree={"source": "imagefolder", "root": "data/tree", "layout": "single"},
    )
    default_config["ood_sets"] += ["ninco", "tree"]
    study = Study(default_config, schema)
    for name in ("ninco", "tree"):
        spec = study.prepare_params(name, "r32")["spec"]
        assert (spec["test_fraction"], spec["seed"], spec["on_bad_image"], spec["download"]) == (0.2, 0, "error", False)
    assert study.prepare_params("shapes-noise", "r32")["spec"]["seed"] == 0  # generated sources, as before


def test_defaults_are_filled(default_config, schema):
    del default_config["training"]["warmup_epochs"]
    config = validate(default_config, schema)
    assert config["training"]["warmup_epochs"] == 1
    assert config["datasets"]["shapes"]["seed"] == 0
    assert config["datasets"]["digits"]["test_fraction"] == 0.2


def test_overrides_change_only_the_matching_cells(default_config, schema):
    default_config["overrides"] = [{"where": {"arch": "vggm11", "id_dataset": "shapes"}, "training": {"epochs": 2}}]
    study = Study(default_config, schema)
    changed = [cid for cid, c in study.cells.items() if c.training["epochs"] == 2]
    assert changed == ["vggm11_shapes_r32_none_s0"]


def test_stage_params_are_sorted_builtin_and_minimal(default_config, schema):
    study = Study(default_config, schema)
    cell = "vggm11_shapes_r32_none_s0"

    def check(value):
        if isinstance(value, dict):
            assert list(value) == sorted(value)
            for v in value.values():
                check(v)
        elif isinstance(value, list):
            for v in value:
                check(v)
        else:
            assert type(value) in (str, int, float, bool, type(None))

    pretrain = study.pretrain_params(cell)
    probe = study.probe_params(cell, "digits")
    embed = study.embed_params(cell, "digits")
    for params in (pretrain, probe, embed, study.metrics_params(cell), study.prepare_params("digits", "r32")):
        check(params)
    assert "probe" not in pretrain and "l2_grid" not in pretrain
    assert "C" not in probe and "paper" not in probe and "l2_grid" in probe
    assert "training" not in probe and probe["role"] == "ood"
    assert "batch_size" not in embed and "keep" not in embed  # neither changes results
    assert study.probe_params(cell, "shapes")["role"] == "id"


def test_a_solver_list_gives_each_solver_its_own_settings_and_the_first_drives_the_metrics(default_config, schema):
    default_config["probe"] = {"solver": ["paper", "sklearn"], "C": 0.5}
    default_config["zero_shot"] = {"split_seed": 7}
    default_config["tsne"] = {"tsne_seed": 9}
    default_config["grid"]["seed"] = [3]
    study = Study(default_config, schema)
    cell = next(iter(study.cells))
    assert study.solvers(cell) == ["paper", "sklearn"] and study.cells[cell].probe["solver"] == "paper"
    first, second = study.probe_params(cell, "digits"), study.probe_params(cell, "digits", "sklearn")
    assert first["solver"] == "paper" and "paper" in first and "C" not in first
    assert second["solver"] == "sklearn" and second["C"] == 0.5 and "paper" not in second
    # the settings' own seeds never replace the cell's seed
    assert (
        study.zero_shot_params(cell, "shapes-noise")["seed"] == 3
        and study.zero_shot_params(cell, "shapes-noise")["split_seed"] == 7
    )
    assert study.tsne_params(cell)["seed"] == 3 and study.tsne_params(cell)["tsne_seed"] == 9
    assert study.shifted_sets(cell) == ["shapes-noise"]  # the default study's noisy copy of its ID set
    default_config["overrides"] = [{"where": {"arch": "vggm17"}, "probe": {"solver": ["sklearn", "paper"]}}]
    with pytest.raises(ConfigError, match="probe.solver: the cells with several solvers must list the same one first"):
        Study(default_config, schema)


def test_probe_params_keep_the_cell_seed_apart_from_the_probe_seed(default_config, schema):
    """Both are called seed in the config; in the probe job's params (and so in every probe
    table row) ``seed`` must stay the cell's, or the seeds of a backbone could not be told apart."""
    default_config["grid"]["seed"] = [3, 4]
    default_config["probe"]["seed"] = 42
    study = Study(default_config, schema)
    params = [study.probe_params(f"vggm11_shapes_r32_none_s{s}", "digits") for s in (3, 4)]
    assert [p["seed"] for p in params] == [3, 4] and [p["probe_seed"] for p in params] == [42, 42]
    assert study.seed_params() == {"confidence": 0.95}


def test_eval_sets_put_the_id_set_first(default_config, schema):
    study = Study(default_config, schema)
    assert study.eval_sets("vggm17_shapes-3c_r32_none_s0") == [
        "shapes-3c",
        "shapes-novel",
        "glyphs",
        "digits",
        "shapes-noise",
    ]


def test_grid_blocks_join_and_take_their_own_ood_sets(default_config, schema):
    default_config["grid"] = [
        {"arch": ["vggm11"], "id_dataset": ["shapes"], "resolution": [32]},
        {
            "arch": ["vggm17"],
            "id_dataset": ["glyphs"],
            "resolution": [32],
            "augmentation": ["rrc_flip"],
            "ood_sets": ["digits", "shapes"],
        },
    ]
    study = Study(default_config, schema)
    assert sorted(study.cells) == ["vggm11_shapes_r32_none_s0", "vggm17_glyphs_r32_rrc_flip_s0"]
    assert study.eval_sets("vggm17_glyphs_r32_rrc_flip_s0") == ["glyphs", "digits", "shapes"]
    assert study.eval_sets("vggm11_shapes_r32_none_s0") == [
        "shapes",
        "shapes-novel",
        "glyphs",
        "digits",
        "shapes-noise",
    ]


def test_duplicate_cells_across_blocks_are_rejected(default_config, schema):
    block = {"arch": ["vggm11"], "id_dataset": ["shapes"], "resolution": [32]}
    default_config["grid"] = [block, dict(block, resolution=[32, 48])]
    with pytest.raises(ConfigError, match="grid\\[1\\]: duplicate cell vggm11_shapes_r32_none_s0"):
        Study(default_config, schema)


def test_source_fingerprint_follows_the_tree(tmp_path):
    from tunnelscope.study.params import source_fingerprint

    assert source_fingerprint(str(tmp_path / "absent")) == "missing"
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(b"x")
    before = source_fingerprint(str(tmp_path))
    assert source_fingerprint(str(tmp_path)) == before
    import os
    import time

    time.sleep(0.01)
    (tmp_path / "cat" / "b.png").write_bytes(b"y")
    os.utime(tmp_path / "cat", ns=(time.time_ns(), time.time_ns()))
    assert source_fingerprint(str(tmp_path)) != before


def test_cell_level_settings_are_checked_and_named(default_config, schema):
    config = dict(default_config, training=dict(default_config["training"], checkpoint="best_val", val_fraction=0))
    with pytest.raises(
        ConfigError, match="cell vggm11_shapes_r32_none_s0: training.checkpoint best_val needs a validation split"
    ):
        Study(config, schema)
    config = dict(
        default_config, grid=dict(default_config["grid"], arch=["timm/resnet18"]), model={"probe_points": "activations"}
    )
    with pytest.raises(ConfigError, match="model.probe_points activations is defined for the built-in architectures"):
        Study(config, schema)


def test_overrides_select_lists_of_levels_and_set_probe_settings(default_config, schema):
    default_config["probe"] = {"solver": "paper", "paper": {"epochs": 5}}
    default_config["overrides"] = [
        {
            "where": {"arch": ["vggm11", "vggm17"], "id_dataset": "shapes-3c"},
            "probe": {"paper": {"lr": 0.5}},
            "training": {"epochs": 2},
        }
    ]
    study = Study(default_config, schema)
    changed = {cid for cid, c in study.cells.items() if c.training["epochs"] == 2}
    assert changed == {"vggm11_shapes-3c_r32_none_s0", "vggm17_shapes-3c_r32_none_s0"}
    params = study.probe_params("vggm17_shapes-3c_r32_none_s0", "digits")["paper"]
    assert params["lr"] == 0.5 and params["epochs"] == 5 and params["report"] == "last"  # merged key by key
    assert study.probe_params("vggm17_shapes_r32_none_s0", "digits")["paper"]["lr"] is None


def test_cells_keep_grid_order_and_datasets_their_preprocessing(default_config, schema):
    default_config["grid"] = [
        {"arch": ["vggm17"], "id_dataset": ["shapes"], "resolution": [48]},
        {"arch": ["vggm11"], "id_dataset": ["shapes"], "resolution": [32]},
    ]
    default_config["datasets"]["digits"].update(mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2])
    study = Study(default_config, schema)
    assert list(study.cells) == ["vggm17_shapes_r48_none_s0", "vggm11_shapes_r32_none_s0"]
    embed = study.embed_params("vggm11_shapes_r32_none_s0", "digits")
    assert embed["normalization"] == {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}
    assert study.embed_params("vggm11_shapes_r32_none_s0", "glyphs")["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert (
        "mean" not in study.prepare_params("digits", "r32")["spec"]
    )  # normalisation does not change the prepared images
    assert study.metrics_params("vggm11_shapes_r32_none_s0")["ood_sets"] == [
        "shapes-novel",
        "glyphs",
        "digits",
        "shapes-noise",
    ]


@pytest.mark.parametrize(
    "args,tag",
    [
        ((224,), "r224"),
        ((224, "bilinear", 0.95), "r224-bilinear-c0.95"),
        ((32, "bicubic", 0.875, True), "r32-native"),
        ((224, "nearest", 1.0, True), "r224-nearest-c1-native"),
    ],
)
def test_transform_tags_round_trip_through_the_registry_pattern(args, tag):
    from tunnelscope.registry import DEFAULT_TRANSFORM, TRANSFORM_TAG, parse_transform_tag, transform_tag

    assert transform_tag(*args) == tag and TRANSFORM_TAG.fullmatch(tag)  # the prepare rule's wildcard accepts it
    parsed = {**DEFAULT_TRANSFORM, **parse_transform_tag(tag)}
    assert transform_tag(parsed["resolution"], parsed["interpolation"], parsed["crop_pct"], parsed["native"]) == tag
    with pytest.raises(ValueError, match="'r224-bicubic' is not a transform tag"):
        parse_transform_tag("r224-bicubic")
