"""Every shipped config validates (exit 0, a budget, warnings allowed for data not there yet),
dry-runs, and builds the params of every job on fake dataset trees: `tunnelscope validate` says
"valid" only where the run will not fail on the config."""

import json
import subprocess
from collections import defaultdict

import pytest
import yaml
from fakedata import fake_roots

from conftest import REPO, snakemake_cmd, tunnelscope_cli
from tunnelscope.data.sources import load_source, split_sizes
from tunnelscope.registry import COMPOSED, TRAINED
from tunnelscope.study.config import Study
from tunnelscope.study.schema import dataset_defaults

PRESETS = ["config.yaml", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "config").glob("*.yaml"))]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_validates_with_a_budget_and_dry_runs(preset, tmp_path):
    validate = tunnelscope_cli(REPO, "validate", preset)
    assert validate.returncode == 0, validate.stderr[-2000:]
    assert "Traceback" not in validate.stdout + validate.stderr
    assert f"{preset}: valid;" in validate.stdout
    budget = [line for line in validate.stdout.splitlines() if line.startswith("budget:")]
    assert len(budget) == 1 and not budget[0].startswith("budget: 0 job-min"), validate.stdout[-2000:]
    for line in validate.stdout.splitlines():  # weights may arrive after validation, as data may
        if line.startswith("warning: pretrained.") and ".weights: file " in line:
            weights = tmp_path / line.split(".weights: file ")[1].removesuffix(" not found")
            weights.parent.mkdir(parents=True, exist_ok=True)
            weights.touch()  # a dry run only needs it to exist
    dry = subprocess.run(
        snakemake_cmd(tmp_path, "-n", "--cores", "2", configfile=REPO / preset),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-2000:]  # a dry run needs no data


def test_pretrained_preset_keeps_the_papers_eval_transform(schema):
    study = Study(yaml.safe_load((REPO / "config/pretrained.yaml").read_text()), schema)
    tags = {c.arch: study.transform_tag(cid, "imagenet") for cid, c in study.cells.items()}
    assert tags == {
        "resnet50-sup": "r224-bilinear-c0.9655",  # the paper's stated per-model values
        "vit-b16-sup": "r224-bilinear-c0.875",
        "vit-b16-mae": "r224-bicubic-c0.9",
        **dict.fromkeys(
            ["resnet50-swav", "vit-b16-dino", "vit-b16-mugs", "convnext-b-sup", "convnextv2-b-fcmae"], "r224"
        ),
    }


def every_params(study: Study) -> dict[str, list[dict]]:
    """The params of every job the Snakefile plans, by the Study method that builds them."""
    built = defaultdict(list)

    def call(method: str, *args) -> None:
        built[method].append(getattr(study, method)(*args))

    trained = set(study.trained_cells())
    for dataset, transform in study.prepared():
        call("prepare_params", dataset, transform)
    for cell in study.cells:
        call("pretrain_params" if cell in trained else "import_params", cell)
        for eval_set in study.eval_sets(cell):
            call("embed_params", cell, eval_set)
            for solver in study.solvers(cell):
                call("probe_params", cell, eval_set, solver)
        for eval_set in study.shifted_sets(cell):
            call("zero_shot_params", cell, eval_set)
        for method in ("tsne_params", "layer_stats_params", "metrics_params", "best_layers_params"):
            call(method, cell)
    if study.cells:
        for method in ("health_params", "untrained_params", "analysis_params", "seed_params"):
            call(method)
    if study.mlp_cells():
        call("tunnel_length_params")
    for run in study.runs:
        call("continual_swap_params", run)
        for network, label in study.continual_networks():
            if label in TRAINED:
                call("continual_train_params", run, network)
            elif label not in COMPOSED:  # the swaps are composed by continual_swap
                call("continual_finetune_params", run, network)
            call("continual_evaluate_params", run, network)
    if study.runs:
        call("continual_table_params")
    return built


@pytest.mark.parametrize("preset", PRESETS)
def test_every_jobs_params_build_and_every_dataset_reads_on_fake_trees(preset, schema, tmp_path):
    """What `validate` accepts builds every job's params and no reader misses a setting: the
    prepare jobs' dataset specs hold every schema default (NINCO, ImageNet-R and layout: single
    once lacked test_fraction and seed) and read their fake trees."""
    config = yaml.safe_load((REPO / preset).read_text())
    config["datasets"] = fake_roots(config["datasets"], tmp_path)
    study = Study(config, schema)
    built = every_params(study)
    assert built["prepare_params"] and (built["probe_params"] or built["continual_evaluate_params"])
    for params in (p for group in built.values() for p in group):
        assert json.loads(json.dumps(params)) == params  # builtin types, as Snakemake records them
    assert study.missing_roots(lambda dataset, transform: False) == []  # every root has its fake tree
    for params in built["prepare_params"]:
        spec = params["spec"]
        assert dataset_defaults(spec) == spec, f"{params['dataset']}: schema defaults missing from its prepare params"
        files = spec.get("base", spec)
        if "root" not in files:
            split_sizes(spec)  # a generated set: the sizes its spec gives
            continue
        # a smaller per_class fits the fake trees; the spec keeps its keys, which is what is checked
        raw = load_source({**files, **({"per_class": 2} if "per_class" in files else {})})
        assert len(raw["train"].labels) and len(raw["test"].labels), params["dataset"]


def test_the_preset_walk_calls_every_params_method(schema, tmp_path):
    """A params method added to Study without a place in every_params fails here."""
    called = set()
    for preset in PRESETS:
        config = yaml.safe_load((REPO / preset).read_text())
        called |= set(every_params(Study(config, schema)))
    assert called == {name for name in dir(Study) if name.endswith("_params")}


def test_single_trees_without_test_fraction_or_seed_validate_dry_run_and_build(schema, tmp_path):
    """NINCO, ImageNet-R and a layout: single tree, given neither test_fraction nor seed."""
    datasets = {
        "tree": {"source": "imagefolder", "root": "tree", "layout": "single"},
        "ninco": {"source": "ninco", "root": "ninco"},
        "imagenet-r": {"source": "imagenet_r", "root": "imagenet-r"},
    }
    config = {
        "results": str(tmp_path / "results"),
        "datasets": fake_roots(datasets, tmp_path),
        "grid": {"arch": ["vggm11"], "id_dataset": ["tree"], "resolution": [32]},
        "ood_sets": ["ninco", "imagenet-r"],
    }
    (tmp_path / "single.yaml").write_text(yaml.safe_dump(config))
    validate = tunnelscope_cli(tmp_path, "validate", "single.yaml", "--no-budget")
    assert validate.returncode == 0 and "single.yaml: valid;" in validate.stdout, validate.stderr[-2000:]
    dry = subprocess.run(
        snakemake_cmd(tmp_path, "-n", "--cores", "1", configfile=tmp_path / "single.yaml"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-2000:]
    study = Study(config, schema)
    for params in every_params(study)["prepare_params"]:
        assert (params["spec"]["test_fraction"], params["spec"]["seed"]) == (0.2, 0)
        raw = load_source(params["spec"])
        assert len(raw["test"].labels) == 4 and len(raw["train"].labels) == 20  # 4 classes of 6, 1 held out each


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda c: c.update(results="/"), "results: / is the filesystem root"),
        (lambda c: c["ood_sets"].append("shapes"), "ood_sets[4]: 'shapes' is the ID set of grid.id_dataset[0]"),
    ],
)
def test_validate_and_the_dry_run_refuse_in_one_line_before_any_job(edit, expected, tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    edit(config)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    validate = tunnelscope_cli(tmp_path, "validate", "study.yaml")
    assert validate.returncode == 1 and validate.stdout == ""
    assert validate.stderr.startswith(f"tunnelscope: config error in study.yaml: {expected}")
    assert validate.stderr.count("\n") == 1
    dry = subprocess.run(
        snakemake_cmd(tmp_path, "-n", "--cores", "1", configfile=tmp_path / "study.yaml"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode != 0 and f"tunnelscope: config error: {expected}" in dry.stderr
    assert "rule " not in dry.stdout + dry.stderr  # no job planned
