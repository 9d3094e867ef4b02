"""Published backbones: cells that load weights instead of pretraining (issue 10)."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from conftest import TINY, snakemake
from inmemory import embed_images
from tunnelscope.cli import main as cli
from tunnelscope.data.splits import SPLITS
from tunnelscope.data.store import ImageStore
from tunnelscope.features.store import read_embeddings
from tunnelscope.models.build import build_model, probe_points
from tunnelscope.models.weights import load_pretrained, model_preprocessing
from tunnelscope.registry import parse_transform_tag
from tunnelscope.runtime import resolve_compute
from tunnelscope.study.config import Study
from tunnelscope.study.schema import ConfigError

ARCH = "timm/test_convnext"
CELL = "tiny-convnext_toy_r32_none_s0"


def random_model(arch=ARCH, classes=10):
    torch.manual_seed(0)
    return build_model(arch, classes, 1.0, 32).eval()


def spec(weights, **extra):
    return {"arch": ARCH, "weights": str(weights), "num_classes": 10, **extra}


def test_pretrained_cell_embeds_like_the_in_memory_model(tmp_path):
    model = random_model()
    save_file(model.state_dict(), tmp_path / "weights.safetensors")
    config = {
        **TINY,
        "model": {},  # a published model keeps its width
        "pretrained": {"tiny-convnext": spec(tmp_path / "weights.safetensors", probe_points="paper")},
        "grid": {"arch": ["tiny-convnext"], "id_dataset": ["toy"], "resolution": [32]},
        "ood_sets": ["toy-glyphs"],
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    snakemake(tmp_path, "aggregate")  # import, embed, probe, metrics and the tables (no figures)
    assert (tmp_path / f"out/logs/import_pretrained/{CELL}.log").exists()
    assert not (tmp_path / "out/logs/pretrain").exists()
    info = json.loads((tmp_path / f"out/cells/{CELL}/cell.json").read_text())
    points = probe_points(model, "default", "paper")
    assert info["num_layers"] == len(points) == 10 and info["id_classes"] == 10  # the stem and 9 depthwise convs

    torch.set_num_threads(2)  # as the embed job
    store = ImageStore(tmp_path / "out/prepared/toy/r32-bicubic-c0.95")  # test_convnext's own crop_pct
    images = np.concatenate([store.splits[s].array() for s in SPLITS])  # synthetic: stored at 32
    own = model_preprocessing(model, ARCH)
    layer_file = tmp_path / f"out/cells/{CELL}/embeddings/toy/avg2x2/layer_{{:03d}}.parquet"
    meta = read_embeddings(layer_file.with_name(layer_file.name.format(points[0].index)))[0]
    ran_with = {key: meta[key] for key in ("precision", "channels_last")}
    assert ran_with == resolve_compute({}, "cpu", model)  # compute's defaults (auto), as resolved here
    if ran_with["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    expected = embed_images(
        model,
        points,
        images,
        ["avg2x2"],
        256,
        np.float16,
        precision=ran_with["precision"],
        mean=own["mean"],
        std=own["std"],
    )
    for point in points:
        _, got, _, _ = read_embeddings(layer_file.with_name(layer_file.name.format(point.index)))
        np.testing.assert_array_equal(got, expected[(point.index, "avg2x2")].astype(np.float32))
    curves = __import__("pandas").read_csv(tmp_path / "out/aggregate/curves.csv")
    assert len(curves) == 2 * len(points)  # ID and one OOD set, every probe point


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    save_file(random_model("timm/test_resnet").state_dict(), tmp_path / "resnet.safetensors")
    with pytest.raises(
        ValueError, match=r"resnet\.safetensors does not fit timm/test_convnext: .*missing, first: stem"
    ):
        load_pretrained(spec(tmp_path / "resnet.safetensors"), 32)


def test_checkpoint_with_other_shapes_is_refused(tmp_path):
    torch.save(random_model().state_dict(), tmp_path / "ten_classes.pth")
    with pytest.raises(
        ValueError,
        match=r"2 shape mismatches, first: head\.fc\.weight \(10, \d+\) in the file, \(5, \d+\) in the model \(num_classes must match",
    ):
        load_pretrained(spec(tmp_path / "ten_classes.pth", num_classes=5), 32)


def test_wrapped_headless_checkpoints_load(tmp_path):
    model = random_model()
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not k.startswith("head.fc.")}
    state["projector.weight"] = torch.zeros(2, 2)  # a self-supervised head, dropped by ignore_prefixes
    torch.save({"state_dict": state, "epoch": 100}, tmp_path / "ssl.pth")
    loaded = load_pretrained(spec(tmp_path / "ssl.pth", ignore_prefixes=["projector."]), 32)
    assert torch.equal(loaded.stem[0].weight, model.stem[0].weight)


def test_timm_weights_load_from_a_local_hugging_face_cache_without_network(tmp_path):
    # The hub cache layout: models--ORG--NAME/{refs/main, snapshots/COMMIT/model.safetensors}.
    repo = tmp_path / "hub" / "models--timm--test_convnext.r160_in1k"
    (repo / "snapshots" / "c0ffee").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")
    model = random_model(classes=1000)
    save_file(model.state_dict(), repo / "snapshots" / "c0ffee" / "model.safetensors")
    cached = {"arch": ARCH, "hf_cache": str(tmp_path / "hub"), "num_classes": 1000, "download": False}
    loaded = load_pretrained(cached, 32)
    assert torch.equal(loaded.stem[0].weight, model.stem[0].weight)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"timm/test_vit: no weights found in .*hub"):
        load_pretrained({**cached, "arch": "timm/test_vit"}, 32)
    assert time.perf_counter() - started < 10  # failed from the cache, no network retries


def test_pretrained_entries_are_validated(schema):
    base = {**TINY, "model": {}, "grid": {"arch": ["net"], "id_dataset": ["toy"], "resolution": [32]}}
    with pytest.raises(ConfigError, match=r"pretrained\.net: give weights"):
        Study({**base, "pretrained": {"net": {"arch": ARCH}}}, schema)
    with pytest.raises(
        ConfigError, match=r"grid\.arch\[0\]: 'net' is not one of .* a name under pretrained \(none defined\)"
    ):
        Study(base, schema)
    study = Study(
        {
            **base,
            "pretrained": {"net": {"arch": ARCH, "weights": "w.pth", "interpolation": "bilinear", "crop_pct": 0.95}},
        },
        schema,
    )
    assert study.pretrained_cells() == ["net_toy_r32_none_s0"] and study.trained_cells() == []
    assert study.prepared_path("toy", "net_toy_r32_none_s0").endswith("prepared/toy/r32-bilinear-c0.95")
    assert study.prepare_params("toy", "r32-bilinear-c0.95")["interpolation"] == "bilinear"


# 4 ViT-B x 12 + 2 ResNet-50 x 49 + 2 ConvNeXt-B x 37 = 220 positions: the paper's 1,980 probes / 9 eval sets.
@pytest.mark.parametrize(
    ("arch", "count"),
    [
        ("timm/vit_base_patch16_224", 12),
        ("torchvision/vit_b_16", 12),
        ("torchvision/resnet50", 49),
        ("timm/convnext_base", 37),
        ("timm/convnextv2_base", 37),
    ],
)
def test_paper_enumeration_of_published_architectures(arch, count, capsys):
    assert cli(["layers", arch, "--probe-points", "paper", "--classes", "1000", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["layers"]) == count


def _preprocessing_study(schema, resolution=32, **entry) -> Study:
    config = {
        **TINY,
        "model": {},
        "pretrained": {"net": {"arch": ARCH, "weights": "w.pth", **entry}},
        "grid": {"arch": ["net"], "id_dataset": ["toy"], "resolution": [resolution]},
    }
    return Study(config, schema)


def test_published_models_use_their_own_preprocessing_unless_told(schema):
    cell = "net_toy_r32_none_s0"
    own = _preprocessing_study(schema)  # test_convnext declares bicubic, crop_pct 0.95, mean/std 0.5
    assert own.transform_tag(cell, "toy") == "r32-bicubic-c0.95"
    assert own.import_params(cell)["pretrained"]["mean"] == [0.5, 0.5, 0.5]
    assert _preprocessing_study(schema, crop_pct=0.9).transform_tag(cell, "toy") == "r32-bicubic-c0.9"  # the entry wins
    paper = _preprocessing_study(schema, preprocessing="paper")
    assert paper.transform_tag(cell, "toy") == "r32" and paper.import_params(cell)["pretrained"]["mean"] is None
    assert _preprocessing_study(schema, preprocessing="paper", interpolation="bilinear").transform_tag(cell, "toy") == (
        "r32-bilinear-c0.875"
    )
    with pytest.raises(
        ConfigError, match=r"^pretrained\.net\.arch: unknown timm model 'test_convnxt'; nearest: test_convnext"
    ):
        _preprocessing_study(schema, arch="timm/test_convnxt")


@pytest.mark.parametrize("arch", ["timm/vit_base_patch16_224.mae", "timm/resnet18", "torchvision/resnet50"])
def test_the_resolved_eval_transform_is_the_models_own(schema, arch):
    """What prepare stores and embed normalises equals timm's (torchvision's) eval transform."""
    import timm
    import torchvision
    from PIL import Image
    from timm.data import create_transform, resolve_model_data_config

    from inmemory import eval_transform, to_input

    study = _preprocessing_study(schema, 224, arch=arch)
    cell = "net_toy_r224_none_s0"
    tag = parse_transform_tag(study.transform_tag(cell, "toy"))
    used = study.import_params(cell)["pretrained"]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8))
    stored = eval_transform(image, tag["resolution"], tag.get("interpolation", "bicubic"), tag.get("crop_pct", 0.875))
    ours = to_input(torch.from_numpy(stored.copy())[None], used["mean"], used["std"])[0]
    name = arch.split("/", 1)[1]
    if arch.startswith("timm/"):
        theirs = create_transform(**resolve_model_data_config(timm.create_model(name, pretrained=False)))(image)
    else:
        theirs = torchvision.models.get_model_weights(name).DEFAULT.transforms()(image)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_the_dag_resolves_a_models_own_preprocessing_without_torch(tmp_path):
    """A child process answers once; the cache file answers after that; torch never loads."""
    code = (
        "import sys; from tunnelscope.study.preprocessing import resolve; "
        "print(resolve(['timm/test_convnext'])['timm/test_convnext']['crop_pct'], 'torch' in sys.modules)"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert run.stdout.split() == ["0.95", "False"], run.stderr
    (cache,) = (tmp_path / "tunnelscope").glob("preprocessing-timm*-torchvision*.json")
    assert json.loads(cache.read_text())["timm/test_convnext"]["interpolation"] == "bicubic"


def test_validate_shows_each_setting_its_origin_and_each_mismatch(tmp_path, capsys):
    config = {
        **TINY,
        "results": str(tmp_path / "out"),
        "model": {},
        "pretrained": {"net": {"arch": ARCH, "weights": str(tmp_path / "w.pth")}},
        "grid": {"arch": ["net"], "id_dataset": ["toy"], "resolution": [32]},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli(["validate", str(path), "--no-budget"]) == 0
    out = capsys.readouterr().out
    assert (
        "  net (timm/test_convnext, preprocessing model): interpolation bicubic (model's own), crop_pct 0.95 (model's own), "
        "mean/std (0.5, 0.5, 0.5) / (0.5, 0.5, 0.5) (model's own), resolution 32 (grid)"
    ) in out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: pretrained.net.weights: file {tmp_path / 'w.pth'} not found",
        "warning: grid.resolution: net runs at 32 px, the model's own input size is 160",
    ]
    config["pretrained"]["net"] |= {"preprocessing": "paper", "interpolation": "bilinear"}
    path.write_text(yaml.safe_dump(config))
    assert cli(["validate", str(path), "--no-budget"]) == 0
    out = capsys.readouterr().out
    assert "interpolation bilinear (entry), crop_pct 0.875 (paper)" in out
    assert (
        "warning: pretrained.net.interpolation: bilinear (entry) differs from bicubic, what timm/test_convnext declares; set pretrained.net.interpolation to match"
        in out
    )
    assert (
        "warning: pretrained.net.crop_pct: 0.875 (paper) differs from 0.95, what timm/test_convnext declares; set pretrained.net.crop_pct or preprocessing: model to match"
        in out
    )
