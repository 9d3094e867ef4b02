"""A researcher's own model: python:FILE.py:FUNCTION architectures and named probe points."""

import json
import re

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import TINY, planned_jobs, snakemake, snakemake_cmd
from tunnelscope.cli import main as cli
from tunnelscope.models.build import build_model, build_python_model, describe, probe_points
from tunnelscope.models.weights import load_pretrained
from tunnelscope.registry import cell_id
from tunnelscope.study.config import Study
from tunnelscope.study.schema import ConfigError

# A small CNN as a researcher's training code would define it: not in timm or torchvision, with
# no module whose class name marks it as a block, so its probe points must be named.
MYNET = """
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, channels):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, stride=2), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, stride=2), nn.ReLU(),
        )
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def build(num_classes=10, channels=8):
    return Net(num_classes, channels)


def not_a_model(num_classes=10):
    return "a string"


def broken(num_classes=10):
    raise RuntimeError("out of coffee")
"""
POINTS = ["features.0", "features.3", "features.6"]
ARCH = "python:mynet.py:build"


@pytest.fixture()
def mynet(tmp_path, monkeypatch):
    """mynet.py in a fresh working directory (relative python: paths start there)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynet.py").write_text(MYNET)
    return tmp_path


def test_a_grid_cell_model_gets_its_kwargs_and_the_id_classes(mynet):
    model = build_model(ARCH, 7, resolution=32, kwargs={"channels": 4})
    assert model.head.out_features == 7 and model.features[0].out_channels == 4
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    absolute = build_model(f"python:{mynet / 'mynet.py'}:build", 3)  # an absolute path works too
    assert absolute.head.out_features == 3
    with pytest.raises(ValueError, match="model.width scales the built-in architectures"):
        build_model(ARCH, 7, width=0.5)


@pytest.mark.parametrize(
    ("arch", "kwargs", "message"),
    [
        ("python:nope.py:build", {}, r"^pretrained\.net\.arch: file nope\.py not found"),
        ("python:mynet.py:buld", {}, r"^pretrained\.net\.arch: mynet\.py defines no function 'buld'$"),
        ("python:mynet.py:not_a_model", {}, r"returned a str, not a torch\.nn\.Module$"),
        ("python:mynet.py:broken", {}, r"broken\(\) from mynet\.py failed: RuntimeError: out of coffee$"),
        (ARCH, {"width": 3}, r"build\(width=3\) from mynet\.py failed: TypeError: .*'width'"),
    ],
)
def test_a_model_that_does_not_build_is_a_one_line_error_naming_the_key(mynet, arch, kwargs, message):
    with pytest.raises(ValueError, match=message) as caught:
        build_python_model(arch, kwargs, "pretrained.net.arch")
    assert "\n" not in str(caught.value) and str(caught.value).startswith("pretrained.net.arch: ")


def test_named_probe_points_are_captured_in_the_listed_order(mynet):
    model = build_model(ARCH, 5, kwargs={"channels": 4})
    points = probe_points(model, "default", POINTS)
    assert [(p.index, p.name, p.side) for p in points] == [
        (1, "features.0", "output"),
        (2, "features.3", "output"),
        (3, "features.6", "output"),
    ]
    assert [p.name for p in probe_points(model, "default", ["features.6", "head"])] == ["features.6", "head"]
    assert {p.side for p in probe_points(model, "input", POINTS)} == {"input"}
    # the default rule of a python: model is its blocks; this one has none, so the error says what to do
    with pytest.raises(
        ValueError,
        match=r"list the modules to probe in probe_points, e.g. from tunnelscope layers python:mynet\.py:build --all-modules",
    ):
        probe_points(model)


def test_an_unknown_module_name_names_the_nearest(mynet):
    model = build_model(ARCH, 5)
    with pytest.raises(ValueError) as caught:
        probe_points(model, "default", ["feature.3"])
    assert (
        str(caught.value)
        == f"probe_points: no module 'feature.3' in {ARCH}; nearest: features.3, features.7, features.6"
    )
    with pytest.raises(ValueError, match=r"no module 'classifier' in .*--all-modules lists them"):
        probe_points(model, "default", ["classifier"])
    with pytest.raises(ValueError, match=r"'features.0' listed more than once"):
        probe_points(model, "default", ["features.0", "features.0"])
    # named points work on any model, the built-in ones included
    assert [p.name for p in probe_points(build_model("vggm11", 3, width=0.125), "default", ["features.0"])] == [
        "features.0"
    ]


def test_describe_codes_an_own_model_from_its_module_tree(mynet):
    model = build_model(ARCH, 5)
    facts = describe(model, ARCH, 32, probe_points(model, "default", POINTS))
    assert facts == {
        "label": ARCH,
        "family": "cnn",
        "arch_family": "net",
        "depth": 3,
        "stem": 3,
        "spatial_reduction": 1.0,  # the first point's map is 32 x 32 at 32 px
    }
    vectors = describe(model, ARCH, 32, probe_points(model, "default", ["head"]))
    assert vectors["family"] == "mlp" and vectors["spatial_reduction"] == 1.0


def test_pretrained_weights_load_into_an_own_model_with_the_key_checks(mynet):
    torch.manual_seed(0)
    saved = build_python_model(ARCH, {"num_classes": 10, "channels": 4})
    torch.save(saved.state_dict(), mynet / "mynet.pt")
    spec = {"arch": ARCH, "kwargs": {"num_classes": 10, "channels": 4}, "weights": "mynet.pt", "num_classes": 10}
    loaded = load_pretrained(spec, 32)
    assert torch.equal(loaded.features[0].weight, saved.features[0].weight) and not loaded.training
    with pytest.raises(ValueError, match=r"mynet\.pt does not fit python:mynet\.py:build: .*shape mismatches"):
        load_pretrained({**spec, "kwargs": {"num_classes": 10, "channels": 8}}, 32)


def own_config(**pretrained_extra):
    return {
        **TINY,
        "pretrained": {
            "mynet": {
                "arch": ARCH,
                "kwargs": {"num_classes": 10},
                "weights": "mynet.pt",
                "num_classes": 10,
                "n_train": 96,
                "probe_points": POINTS,
                **pretrained_extra,
            }
        },
        "grid": {"arch": ["mynet", ARCH, "vggm11"], "id_dataset": ["toy"], "resolution": [32]},
        "model": {"kwargs": {"channels": 4}},
        "overrides": [
            {"where": {"arch": "vggm11"}, "model": {"width": 0.125}},  # the width of a paper architecture only
            {"where": {"arch": ARCH}, "model": {"probe_points": POINTS}},
        ],
        "ood_sets": ["toy-glyphs"],
    }


def test_the_file_content_is_in_the_params_of_every_stage_that_builds_the_model(mynet, schema):
    study = Study(own_config(), schema)
    own, published, builtin = "python-mynet-build_toy_r32_none_s0", "mynet_toy_r32_none_s0", "vggm11_toy_r32_none_s0"
    assert list(study.cells) == [published, own, builtin] and cell_id(ARCH, "toy", 32, "none", 0) == own
    assert study.pretrain_params(own)["model"]["kwargs"] == {"channels": 4}
    assert "kwargs" not in study.embed_params(builtin, "toy")["model"]  # other cells: unchanged params
    assert "kwargs" not in study.import_params(published)["model"]  # the entry's own kwargs count
    assert study.import_params(published)["pretrained"]["kwargs"] == {"num_classes": 10}
    stages = {
        own: lambda s: [s.pretrain_params(own), s.embed_params(own, "toy")],
        published: lambda s: [s.import_params(published), s.embed_params(published, "toy-glyphs")],
        builtin: lambda s: [s.pretrain_params(builtin), s.embed_params(builtin, "toy")],
    }
    before = {cell: stage(study) for cell, stage in stages.items()}
    (mynet / "mynet.py").write_text(MYNET + "\n# a comment changes the file\n")
    after = {cell: stage(Study(own_config(), schema)) for cell, stage in stages.items()}
    for cell in (own, published):
        assert all(a != b for a, b in zip(before[cell], after[cell])), cell
    assert before[builtin] == after[builtin]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["pretrained"]["mynet"].update(arch="python:gone.py:build"),
            r"^pretrained\.mynet\.arch: python:gone\.py:build: file gone\.py not found",
        ),
        (
            lambda c: c["grid"].update(arch=["python:models/gone.py:build"]),
            r"^grid\.arch\[0\]: python:models/gone\.py:build: file models/gone\.py not found",
        ),
        (lambda c: c["grid"].update(arch=["python:mynet.py:"]), r"^grid\.arch\[0\]: 'python:mynet\.py:' is not one of"),
        (
            lambda c: c["pretrained"]["mynet"].pop("n_train"),
            r"^pretrained\.mynet\.n_train: give the number of images mynet\.pt was trained on",
        ),
        (
            lambda c: c["pretrained"]["mynet"].update(hf_cache="hf"),
            r"^pretrained\.mynet: a python: arch loads its weights from weights",
        ),
        (
            lambda c: c["pretrained"].update(other={"arch": "timm/resnet18", "weights": "w.pth", "kwargs": {}}),
            r"^pretrained\.other\.kwargs: only a python:FILE\.py:FUNCTION arch takes kwargs",
        ),
        (
            lambda c: c["model"].update(width=0.5),
            r"^model\.width: 0\.5 does not apply to mynet \(cell mynet_toy_r32_none_s0\)",
        ),
        (lambda c: c["model"]["kwargs"].update(num_classes=3), r"model\.kwargs may not set num_classes"),
        (
            lambda c: c["pretrained"]["mynet"].update(probe_points=[]),
            r"^pretrained\.mynet\.probe_points: \[\] is not one of",
        ),
    ],
)
def test_own_model_settings_are_checked_before_any_job(mynet, schema, change, message):
    config = own_config()
    change(config)
    with pytest.raises(ConfigError, match=message):
        Study(config, schema)


def test_one_default_probe_point_rule_everywhere(schema):
    config = {
        **TINY,
        "pretrained": {"net": {"arch": "timm/resnet18", "weights": "w.pth"}},
        "grid": {"arch": ["net", "timm/resnet18"], "id_dataset": ["toy"], "resolution": [32]},
        "model": {},
    }
    study = Study(config, schema)
    assert study.cells["net_toy_r32_none_s0"].model["probe_points"] == "default"
    assert study.cells["timm-resnet18_toy_r32_none_s0"].model.get("probe_points", "default") == "default"
    preset = yaml.safe_load((__import__("conftest").REPO / "config/pretrained.yaml").read_text())
    assert {entry["probe_points"] for entry in preset["pretrained"].values()} == {"paper"}


def test_layers_lists_an_own_model_and_the_names_to_copy(mynet, capsys):
    assert cli(["layers", ARCH, "--resolution", "32", "--kwargs", "channels=4", "--modules", *POINTS]) == 0
    out = capsys.readouterr().out
    assert "3 probe points (the listed modules)" in out and "features.3" in out
    assert out.strip().splitlines()[-1] == "as names: probe_points: [features.0, features.3, features.6]"
    assert cli(["layers", ARCH, "--resolution", "32", "--all-modules", "--json", "--kwargs", '{"channels": 4}']) == 0
    modules = {m["name"]: m for m in json.loads(capsys.readouterr().out)["modules"]}
    assert modules["features.3"] == {"name": "features.3", "type": "Conv2d", "shape": [4, 16, 16]}
    assert modules["head"]["shape"] == [100]  # --classes, as a grid cell's num_classes
    assert cli(["layers", ARCH, "--resolution", "32"]) == 0  # no blocks: its modules, to name some
    out = capsys.readouterr().out
    assert "has no block modules" in out and "features.6                   ReLU" not in out
    assert re.search(r"^features\.6 +Conv2d +8x8x8", out, re.M)
    assert cli(["layers", ARCH, "--modules", "features.9"]) == 1
    assert (
        "no module 'features.9' in python:mynet.py:build; nearest: features.7, features.6, features.5"
        in capsys.readouterr().err
    )
    assert cli(["layers", "vggm11", "--kwargs", "a=1"]) == 1


def test_validate_builds_own_models_and_checks_their_names(mynet, capsys):
    (mynet / "good.yaml").write_text(yaml.safe_dump(own_config()))
    assert cli(["validate", "good.yaml"]) == 0  # with the budget, which builds every model
    out = capsys.readouterr().out
    assert "valid; 3 cells" in out and "python-mynet-build_toy_r32_none_s0" in out and "mynet_toy_r32_none_s0" in out
    config = own_config()
    config["pretrained"]["mynet"]["probe_points"] = ["features.0", "feature.3"]
    (mynet / "bad.yaml").write_text(yaml.safe_dump(config))
    assert cli(["validate", "bad.yaml", "--no-budget"]) == 1
    assert capsys.readouterr().err.strip() == (
        "tunnelscope: config error in bad.yaml: pretrained.mynet.probe_points: no module 'feature.3' in "
        "python:mynet.py:build; nearest: features.3, features.7, features.6"
    )
    config = own_config()
    config["overrides"][1]["model"]["probe_points"] = ["features.3", "features.0"]
    (mynet / "bad.yaml").write_text(yaml.safe_dump(config))
    assert cli(["validate", "bad.yaml", "--no-budget"]) == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            "cell python-mynet-build_toy_r32_none_s0: model.probe_points: layer i is the i-th name, so list them "
            "from input to output; a forward pass runs them as features.0, features.3"
        )
    )
    config = own_config()
    config["model"]["kwargs"] = {"chanels": 4}
    (mynet / "bad.yaml").write_text(yaml.safe_dump(config))
    assert cli(["validate", "bad.yaml", "--no-budget"]) == 1
    assert "grid.arch[1]: build(chanels=4, num_classes=4) from mynet.py failed" in capsys.readouterr().err


def test_an_own_model_runs_through_the_workflow_with_named_probe_points(tmp_path):
    """The acceptance run: a .py model with a saved state dict and named probe points, through the
    real snakemake CLI; then editing the file plans that cell's jobs again."""
    (tmp_path / "mynet.py").write_text(MYNET)
    torch.manual_seed(0)
    model = build_python_model(f"python:{tmp_path / 'mynet.py'}:build", {"num_classes": 10})
    torch.save(model.state_dict(), tmp_path / "mynet.pt")
    config = {
        **own_config(),
        "grid": {"arch": ["mynet"], "id_dataset": ["toy"], "resolution": [32]},
        "overrides": [],
        "model": {},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    snakemake(tmp_path, "aggregate")  # import, embed, probe, cell metrics, the aggregate tables
    cell = tmp_path / "out/cells/mynet_toy_r32_none_s0"
    info = json.loads((cell / "cell.json").read_text())
    assert info["num_layers"] == 3 and info["family"] == "cnn" and info["label"] == "mynet"
    for eval_set in ("toy", "toy-glyphs"):
        files = sorted((cell / "embeddings" / eval_set / "avg2x2").glob("layer_*.parquet"))
        meta = [json.loads(pq.read_schema(f).metadata[b"tunnelscope"]) for f in files]
        assert [(m["layer"], m["layer_name"]) for m in meta] == [
            (1, "features.0"),
            (2, "features.3"),
            (3, "features.6"),
        ]

    dry = snakemake_cmd(tmp_path, "--dry-run", "aggregate")  # (--configfile takes several values)
    run = __import__("subprocess").run
    assert not planned_jobs(run(dry, capture_output=True, text=True, check=True).stdout)
    (tmp_path / "mynet.py").write_text(MYNET + "\n# edited\n")
    planned = planned_jobs(run(dry, capture_output=True, text=True, check=True).stdout)
    rules = {rule for rule, _ in planned}
    assert {
        ("import_pretrained", "cell=mynet_toy_r32_none_s0"),
        ("embed", "cell=mynet_toy_r32_none_s0, eval_set=toy"),
    } <= planned
    assert "prepare" not in rules


def test_a_grid_cell_trains_an_own_model_and_its_checkpoint_rebuilds_it(mynet):
    from test_reliability import PARAMS, TRAINING, toy_store

    from tunnelscope.models.checkpoints import load_backbone
    from tunnelscope.training.loop import pretrain

    model = {"width": 1.0, "kwargs": {"channels": 4}, "probe_points": POINTS, "source_sha256": "x"}
    params = dict(PARAMS, arch=ARCH, augmentation="none", model=model, training=dict(TRAINING, epochs=1))
    outputs = dict(
        zip(
            ("checkpoint", "train_log", "info_path", "state_path"),
            (mynet / name for name in ("ckpt.safetensors", "log.csv", "info.json", "state.pt")),
        )
    )
    store = toy_store(mynet, 64)
    info = pretrain(params, store, **outputs)
    assert info["num_layers"] == 3 and info["depth"] == 3 and info["label"] == ARCH and info["id_classes"] == 4
    rebuilt, meta = load_backbone(outputs["checkpoint"])
    assert rebuilt.head.out_features == 4 and rebuilt.features[0].out_channels == 4
    # a misspelt probe point stops the job before any training
    outputs["checkpoint"].unlink()
    for names, message in ((["features.0", "feature.3"], "no module 'feature.3'"), (POINTS[::-1], "input to output")):
        with pytest.raises(ValueError, match=message):
            pretrain(dict(params, model=dict(model, probe_points=names)), store, **outputs)
        assert not outputs["checkpoint"].exists()


def test_cell_ids_of_own_models_are_path_and_wildcard_safe():
    assert (
        cell_id("python:models/my net.v2.py:build_net", "toy", 32, "none", 0)
        == "python-my-net-v2-build_net_toy_r32_none_s0"
    )
    assert cell_id("python:/abs/mynet.py:build", "toy", 32, "none", 0) == "python-mynet-build_toy_r32_none_s0"
    assert cell_id("timm/resnet18", "toy", 32, "none", 0) == "timm-resnet18_toy_r32_none_s0"  # unchanged
    assert cell_id("vggm11", "toy", 32, "rrc_flip", 1) == "vggm11_toy_r32_rrc_flip_s1"


def test_a_module_that_runs_twice_is_refused_as_a_probe_point():
    """A hook sees every call of a shared module (torchvision's BasicBlock runs one ReLU twice);
    its capture would keep the first, which is not what the name says."""
    from torch import nn

    from tunnelscope.models.build import check_forward_order

    relu = nn.ReLU()
    model = nn.Sequential()
    model.conv, model.act, model.conv2 = nn.Conv2d(3, 4, 3), relu, nn.Conv2d(4, 4, 3)
    model.act2 = relu  # the same module again
    with pytest.raises(ValueError, match=r"^probe_points: act \(2 times\) runs more than once per forward pass"):
        check_forward_order(model, ["conv", "act"], 16)
    with pytest.raises(ValueError, match=r"^probe_points: no module 'conv3'"):
        check_forward_order(model, ["conv", "conv3"], 16)
    check_forward_order(model, ["conv", "conv2"], 16)
