import numpy as np
import pytest
import torch

from inmemory import embed_images, to_input
from tunnelscope.models.build import (
    build_model,
    count_parameters,
    describe,
    probe_points,
)
from tunnelscope.models.capture import layer_shapes, pool
from tunnelscope.models.points import ProbePoint, enumerate_blocks

PAPER = {
    # arch: (params at 100 classes, probed layers)
    "vggm11": (9.46e6, 10),
    "vggm17": (20.08e6, 16),
    "resnet18": (11.22e6, 17),
    "resnet34": (21.33e6, 33),
    "vit-t": (5.4e6, 12),
    "vit-t-plus": (8.1e6, 18),
}


@pytest.mark.parametrize("arch", list(PAPER))
def test_paper_parameter_and_layer_counts(arch):
    params, layers = PAPER[arch]
    model = build_model(arch, 100, resolution=64)
    assert count_parameters(model) == pytest.approx(params, rel=0.01)
    assert len(probe_points(model)) == layers


@pytest.mark.parametrize("arch", ["vggm11-dagger", "vggm17-dagger"])
def test_dagger_layer_counts(arch):
    assert len(probe_points(build_model(arch, 100))) == int(arch[4:6]) - 1


def _last_conv_size(model, resolution):
    sizes = []
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    hook = last.register_forward_hook(lambda m, a, o: sizes.append(o.shape[-1]))
    model.eval()(torch.zeros(1, 3, resolution, resolution))
    hook.remove()
    return sizes[0]


def test_dagger_removes_the_first_two_pools():
    # VGGm: 32 -> 16 -> 8 -> 4 -> 2 before the last stage; VGGm-dagger skips two halvings.
    assert _last_conv_size(build_model("vggm11", 10, 0.25), 32) == 2
    assert _last_conv_size(build_model("vggm11-dagger", 10, 0.25), 32) == 8


def test_width_scales_channels():
    model = build_model("vggm11", 10, 0.25)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 128, 128, 128, 128]
    assert count_parameters(build_model("resnet18", 10, 0.25)) < count_parameters(build_model("resnet18", 10)) / 10


def test_unknown_architecture():
    with pytest.raises(ValueError, match="'alexnet'"):
        build_model("alexnet", 10)


def test_probe_point_sides_and_names():
    resnet = probe_points(build_model("resnet18", 10))
    assert resnet[0].name == "conv1" and resnet[0].side == "input"
    assert [p.name for p in resnet[1:3]] == ["layer1.0.conv1", "layer1.0.conv2"]
    assert not any("downsample" in p.name for p in resnet)
    vit = probe_points(build_model("vit-t", 10, resolution=32))
    assert vit[-1].name == "blocks.11" and vit[-1].post == "norm"


@pytest.mark.parametrize("resolution", [32, 64, 224])
@pytest.mark.parametrize("arch", ["vggm11", "resnet18", "vit-t"])
def test_shapes_at_resolutions(arch, resolution):
    model = build_model(arch, 10, 0.25, resolution)
    shapes = layer_shapes(model, probe_points(model), resolution)
    first, last = shapes[1], shapes[max(shapes)]
    if arch == "vggm11":
        assert first == (16, resolution, resolution) and last == (128, resolution // 16, resolution // 16)
    elif arch == "resnet18":
        assert first == (3, resolution, resolution)  # layer 1 is the image
        assert last == (128, resolution // 32, resolution // 32)  # input of the last conv2
    else:
        assert first == last == ((resolution // 8) ** 2, 48)  # 3 heads x 16 dims at width 0.25


def _reference_vggm(model, x):
    outs = []
    for module in model.features:
        x = module(x)
        if isinstance(module, torch.nn.Conv2d):
            outs.append(x.clone())
    return outs


def _reference_resnet(model, x):
    outs = [x.clone()]
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            outs.append(x.clone())
            outs.append(block.relu1(block.bn1(block.conv1(x))).clone())
            x = block(x)
    return outs


def _reference_vit(model, x):
    x = model._pos_embed(model.patch_embed(x))
    outs = []
    for block in model.blocks:
        x = block(x)
        outs.append(model.norm(x))
    return outs


REFERENCES = {"vgg": _reference_vggm, "resnet": _reference_resnet, "vit": _reference_vit}


@pytest.mark.parametrize(
    "arch",
    ["vggm11", "vggm17", "vggm11-dagger", "vggm17-dagger", "resnet18", "resnet34", "vit-t", "vit-t-plus", "vgg19"],
)
def test_capture_parity_with_a_plain_forward(arch):
    torch.manual_seed(0)
    model = build_model(arch, 7, 0.25, 32).eval()
    images = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    points = probe_points(model)
    captured = embed_images(model, points, images, ["avg2x2"], dtype=np.float32)
    reference = REFERENCES[next(k for k in REFERENCES if arch.startswith(k))]
    with torch.no_grad():
        expected = reference(model, to_input(torch.from_numpy(images)))
    assert len(expected) == len(points)
    for point, ref in zip(points, expected):
        np.testing.assert_allclose(captured[(point.index, "avg2x2")], pool(ref, "avg2x2").numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name",
    [
        "timm/resnet18",
        "timm/convnext_atto",
        "timm/efficientnet_b0",
        "timm/deit_tiny_patch16_224",
        "torchvision/mobilenet_v3_small",
    ],
)
def test_any_timm_or_torchvision_model_captures_what_fx_computes(name):
    from timm.models._features_fx import create_feature_extractor

    torch.manual_seed(0)
    model = build_model(name, 5, resolution=64).eval()
    points = enumerate_blocks(model)
    assert len(points) >= 4
    images = np.random.default_rng(0).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    captured = embed_images(model, points, images, ["avg2x2"], dtype=np.float32)
    # A second, independent mechanism: torch.fx graph outputs at the same modules.
    extractor = create_feature_extractor(model, return_nodes=[p.name for p in points])
    with torch.no_grad():
        expected = extractor(to_input(torch.from_numpy(images)))
    for p in points:
        ref = pool(expected[p.name], "avg2x2", p.prefix_tokens).numpy()
        np.testing.assert_allclose(captured[(p.index, "avg2x2")], ref, rtol=1e-4, atol=1e-5)


def test_block_enumeration_per_family():
    names = lambda arch: [p.name for p in enumerate_blocks(build_model(arch, 5, resolution=64))]  # noqa: E731
    assert names("timm/resnet18") == [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    assert names("timm/deit_tiny_patch16_224") == [f"blocks.{i}" for i in range(12)]
    assert names("timm/convnext_atto")[0] == "stages.0.blocks.0"
    deit = enumerate_blocks(build_model("timm/deit_tiny_patch16_224", 5, resolution=64))
    assert deit[0].prefix_tokens == 1


def test_describe_external_models():
    vit = build_model("timm/deit_tiny_patch16_224", 5, resolution=64)
    info = describe(vit, "timm/deit_tiny_patch16_224", 64)
    assert {k: info[k] for k in ("family", "depth", "stem", "spatial_reduction")} == {
        "family": "vit",
        "depth": 12,
        "stem": 16,
        "spatial_reduction": 1.0,
    }
    cnn = build_model("timm/resnet18", 5, resolution=64)
    info = describe(cnn, "timm/resnet18", 64)
    # phi = side of the first block's map / input side: stride-2 stem + max-pool = 0.25, as the paper codes ResNets.
    assert (
        info["family"] == "cnn"
        and info["stem"] == 7
        and info["spatial_reduction"] == 0.25
        and info["arch_family"] == "resnet"
    )


def test_paper_architectures_are_coded_as_the_released_table():
    phi = {
        arch: describe(None, arch, 32)["spatial_reduction"] for arch in ("vggm11", "vggm11-dagger", "resnet18", "vit-t")
    }
    assert phi == {"vggm11": 0.5, "vggm11-dagger": 1.0, "resnet18": 0.25, "vit-t": 1.0}  # ViT coded 1.0 as in the table
    # The CNNs' phi is what the built models do: the map side entering the second stage / input side.
    for arch in ("vggm11", "vggm11-dagger", "resnet18"):
        model = build_model(arch, 5, width=0.125, resolution=32)
        convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
        second_stage = "layer1.0.conv1" if arch == "resnet18" else convs[2]
        side = layer_shapes(model, [ProbePoint(1, second_stage, "input")], 32)[1][-1]
        assert side / 32 == phi[arch], arch


def test_post_activation_probe_points():
    vgg = probe_points(build_model("vggm11", 5, width=0.125, resolution=32), enumeration="activations")
    assert len(vgg) == 10 and all(
        isinstance(dict(build_model("vggm11", 5, width=0.125).named_modules())[p.name], torch.nn.ReLU) for p in vgg
    )
    resnet = [p.name for p in probe_points(build_model("resnet18", 5, width=0.125), enumeration="activations")]
    assert (
        len(resnet) == 17 and resnet[0] == "relu" and resnet[-1] == "layer4.1.relu2"
    )  # ends at the last block's output
    vit = probe_points(build_model("vit-t", 5, width=0.125, resolution=32), enumeration="activations")
    assert [p.name for p in vit] == [f"blocks.{i}" for i in range(12)]
    with pytest.raises(ValueError, match="activations enumeration is defined for the built-in architectures"):
        probe_points(build_model("timm/resnet18", 5, resolution=32), enumeration="activations")
