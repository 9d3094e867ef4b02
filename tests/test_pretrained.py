"""Published backbones: cells that load weights instead of pretraining (issue 10)."""

import json
import time

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from conftest import TINY, snakemake
from tunnelscope.cli import main as cli
from tunnelscope.data.splits import SPLITS
from tunnelscope.data.store import Store
from tunnelscope.features.extract import embed_images
from tunnelscope.features.store import read_embeddings
from tunnelscope.models.build import build_model, probe_points
from tunnelscope.models.weights import load_pretrained, model_preprocessing
from tunnelscope.study.config import ConfigError, Study

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
        "pretrained": {"tiny-convnext": spec(tmp_path / "weights.safetensors")},
        "grid": {"arch": ["tiny-convnext"], "id_dataset": ["toy"], "resolution": [32]},
        "ood_sets": ["toy-glyphs"],
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    snakemake(tmp_path)  # the whole study: import, embed, probe, metrics, analysis, paper
    assert (tmp_path / f"logs/import_pretrained/{CELL}.log").exists() and not (tmp_path / "logs/pretrain").exists()
    info = json.loads((tmp_path / f"out/cells/{CELL}/cell.json").read_text())
    points = probe_points(model, "default", "paper")
    assert info["num_layers"] == len(points) == 10 and info["id_classes"] == 10  # the stem and 9 depthwise convs

    torch.set_num_threads(2)  # as the embed job
    store = Store(tmp_path / "out/prepared/toy/r32-bicubic-c0.95")  # test_convnext's own crop_pct
    images = np.concatenate([store.splits[s].array() for s in SPLITS])  # synthetic: stored at 32
    own = model_preprocessing(model, ARCH)
    expected = embed_images(model, points, images, ["avg2x2"], 256, np.float16, mean=own["mean"], std=own["std"])
    for point in points:
        _, got, _, _ = read_embeddings(
            tmp_path / f"out/cells/{CELL}/embeddings/toy/avg2x2/layer_{point.index:03d}.parquet"
        )
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
