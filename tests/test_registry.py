"""One registry of names: the schema, the CLI and the code all read tunnelscope.registry."""

import pytest
import yaml

from conftest import REPO
from tunnelscope import registry
from tunnelscope.cli import main
from tunnelscope.data import corruptions, synthetic
from tunnelscope.data.sources import FILE_READERS
from tunnelscope.models.build import BUILDERS, build_model, probe_points
from tunnelscope.models.capture import pool
from tunnelscope.study.schema import SCHEMA_PATH, load_schema, registry_choices


def enum_nodes(node, path=()):
    """(path, node) of every schema node that lists allowed values."""
    if isinstance(node, dict):
        if "enum" in node or "x-registry" in node:
            yield path, node
        for key, value in node.items():
            yield from enum_nodes(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from enum_nodes(value, (*path, i))


def test_every_schema_enum_comes_from_the_registry():
    raw = yaml.safe_load(SCHEMA_PATH.read_text())
    nodes = list(enum_nodes(raw))
    assert len(nodes) > 30
    literal = ["/".join(map(str, p)) for p, node in nodes if "enum" in node]
    assert not literal, f"write these as x-registry: NAME in {SCHEMA_PATH.name}: {literal}"
    loaded = dict(enum_nodes(load_schema()))
    for path, node in nodes:
        assert loaded[path]["enum"] == registry_choices(node["x-registry"]), path


def test_every_setting_choice_is_used_by_the_schema():
    named = {node["x-registry"] for _, node in enum_nodes(yaml.safe_load(SCHEMA_PATH.read_text()))}
    assert set(registry.SETTING_CHOICES) <= named


def test_the_code_knows_exactly_the_registered_names():
    assert set(BUILDERS) == set(registry.ARCHS)
    assert tuple(FILE_READERS) == registry.FILE_SOURCES
    assert set(registry.SOURCES) == {*registry.GENERATED_SOURCES, *registry.FILE_SOURCES}
    assert tuple(corruptions.PARAMETERS) == registry.CORRUPTIONS
    for family in registry.SYNTHETIC_FAMILIES:
        synthetic.prototype(family, 0)


def test_every_pooling_and_probe_point_rule_runs():
    import torch

    for pooling in ("avg2x2", "avg1x1", "avg4x4"):
        assert pool(torch.ones(2, 3, 8, 8), pooling).shape[0] == 2
    tokens = torch.ones(2, 5, 4)
    assert pool(tokens, "token_mean").shape == (2, 4) and pool(tokens, "cls", prefix_tokens=1).shape == (2, 4)
    assert set(registry.POOLINGS) == {"avg2x2", "avg1x1", "avg4x4", "token_mean", "cls"}
    model = build_model("resnet18", 3, width=0.125, resolution=32)  # every rule applies to a ResNet
    for rule in registry.PROBE_POINT_RULES:
        assert probe_points(model, enumeration=rule)


@pytest.mark.parametrize(
    "option, names",
    [
        ("--probe-points", registry.PROBE_POINT_RULES),
        ("--side", registry.CAPTURE_SIDES),
        ("--pooling", registry.POOLINGS),
    ],
)
def test_the_cli_offers_the_registered_names(capsys, option, names):
    with pytest.raises(SystemExit):
        main(["layers", "vggm11", option, "bogus"])
    assert "choose from " + ", ".join(map(repr, names)) in capsys.readouterr().err


def test_config_files_name_only_registered_architectures():
    for path in [REPO / "config.yaml", *sorted((REPO / "config").glob("*.yaml"))]:
        config = yaml.safe_load(path.read_text())
        published = set(config.get("pretrained", {}))
        blocks = config.get("grid", [])
        for block in blocks if isinstance(blocks, list) else [blocks]:
            for arch in block.get("arch", []):
                known = (
                    arch in registry.ARCHS
                    or arch in published
                    or registry.parse_mlp(arch)
                    or arch.startswith(("timm/", "torchvision/"))
                )
                assert known, f"{path.name}: {arch}"


def test_the_metric_table_labels_every_analysis_target_and_refuses_unknown_names():
    assert registry.ANALYSIS_TARGETS and all(registry.metric_label(t) for t in registry.ANALYSIS_TARGETS)
    # every subset lists its metrics in the table's order
    for subset in (registry.SEED_SUMMARISED_METRICS, registry.ANALYSIS_TARGETS, registry.SOLVER_COMPARED_METRICS):
        assert list(subset) == [name for name in registry.METRICS if name in subset]
    with pytest.raises(ValueError, match="metric 'bogus' has no label in registry.METRICS"):
        registry.metric_label("bogus")
    with pytest.raises(ValueError, match="metric 'tunnel' has no label"):
        registry.metric_label("tunnel")
