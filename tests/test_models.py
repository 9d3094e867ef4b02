import pytest
import torch

from tunnelscope.models import build_model, count_parameters


@pytest.mark.parametrize("arch,params,layers", [("vggm11", 9.46e6, 10), ("vggm17", 20.08e6, 16)])
def test_paper_parameter_and_layer_counts(arch, params, layers):
    model = build_model(arch, 100)
    assert count_parameters(model) == pytest.approx(params, rel=0.005)
    assert len(model.probe_points()) == layers
    assert len(build_model(f"{arch}-dagger", 100).probe_points()) == layers


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


def test_unknown_architecture():
    with pytest.raises(ValueError, match="'alexnet'"):
        build_model("alexnet", 10)
