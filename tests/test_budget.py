"""The budget estimate of `tunnelscope validate`: units per job, published sizes where files are
absent, rates calibrated from a run's benchmark files."""

import copy
import dataclasses

import pytest
import yaml

from conftest import CELLS, EVAL_SETS, TINY
from tunnelscope import budget, model_facts
from tunnelscope.cli import main
from tunnelscope.data.sources import OFFICIAL_SIZES, split_sizes
from tunnelscope.data.store import DatasetError
from tunnelscope.registry import FILE_SOURCES
from tunnelscope.study.config import Study
from tunnelscope.study.schema import ConfigError, load_schema


def _study(config: dict, results) -> Study:
    return Study({**copy.deepcopy(config), "results": str(results)}, load_schema())


def _units(study: Study) -> dict[str, dict]:
    return {b.cell: b for b in budget.cell_budgets(study)}


def _units_of(cell_budget) -> dict[tuple[str, str], float]:
    """A cell's jobs as (stage, job name) -> units."""
    return {(job.stage, job.name): units for job, units in cell_budget.jobs.items()}


def test_units_follow_epochs_images_and_resolution(tmp_path):
    base = _units(_study(TINY, tmp_path))[CELLS[0]]
    longer = _units(_study({**TINY, "training": {**TINY["training"], "epochs": 3}}, tmp_path))[CELLS[0]]
    assert longer.units("pretrain") == pytest.approx(3 * base.units("pretrain"))
    assert longer.units("embed") == base.units("embed")
    # the ID set has 4 classes x 24 train images; a training image costs 3 forward passes
    jobs = _units_of(base)
    flops = jobs["pretrain", CELLS[0]] / (3 * 96)
    assert jobs["embed", f"{CELLS[0]}_toy"] == pytest.approx(flops * (96 + 32))
    assert jobs["embed", f"{CELLS[0]}_toy-glyphs"] == pytest.approx(flops * (36 + 18))
    big = _units(_study({**TINY, "grid": {**TINY["grid"], "resolution": [64]}}, tmp_path))
    ratio = big[CELLS[0].replace("r32", "r64")].units("embed") / base.units("embed")
    assert 3.5 < ratio < 4.5  # convolutions cost per pixel
    # every eval set gets one embed and one probe job; each store is prepared once, for the first cell
    assert {j for s, j in jobs if s == "probe"} == {f"{CELLS[0]}_{d}_lbfgs" for d in EVAL_SETS}
    second = _units(_study(TINY, tmp_path))[CELLS[1]]
    assert second.units("prepare") == 0 and base.units("prepare") == 2 * (96 + 32) + 36 + 18 + 1797


def test_no_early_reduction_costs_more_than_the_plain_stem(tmp_path):
    grid = {**TINY["grid"], "arch": ["vggm11", "vggm11-dagger"], "augmentation": ["none"]}
    units = _units(_study({**TINY, "grid": grid}, tmp_path))
    plain, dagger = units["vggm11_toy_r32_none_s0"], units["vggm11-dagger_toy_r32_none_s0"]
    assert dagger.units("pretrain") > 5 * plain.units("pretrain")
    assert dagger.units("probe") == plain.units("probe")  # the same pooled dims per layer


def test_rates_come_from_the_run_benchmark_files(tmp_path):
    study = _study(TINY, tmp_path)
    budgets = budget.cell_budgets(study)
    assert budget.calibrate(budgets, tmp_path).by_stage == budget.REFERENCE_RATES
    first = budgets[0]
    for job, units in first.jobs.items():
        path = tmp_path / job.benchmark
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"s\th:m:s\tmax_rss\n{units / 1e6:.6f}\t0:00:01\t1\n")
    rates = budget.calibrate(budgets, tmp_path)
    assert set(rates.by_kind) == {
        ("prepare", ""),
        ("pretrain", "vggm11"),
        ("embed", "vggm11"),
        ("probe", "lbfgs"),
    }
    for job in first.jobs:
        assert rates.of(job, "vggm11") == pytest.approx(1e6, rel=1e-3)
        other = dataclasses.replace(job, kind=job.kind.replace("lbfgs", "paper"))
        assert rates.of(other, "resnet18") == pytest.approx(1e6, rel=1e-3)  # the median
    assert rates.jobs == {"prepare": 4, "pretrain": 1, "embed": 4, "probe": 4}
    assert len(first.jobs) == 13
    assert first.seconds(rates) == pytest.approx(sum(first.jobs.values()) / 1e6, rel=1e-3)
    assert first.remaining(rates) == 0 and budgets[1].remaining(rates) == pytest.approx(budgets[1].seconds(rates))


def test_published_sizes_stand_in_for_absent_files(tmp_path):
    # optional per source (one without gets no estimate until its files are there); a tree has none
    assert set(OFFICIAL_SIZES) <= set(FILE_SOURCES) - {"imagefolder"}
    spec = {"source": "cifar100", "root": str(tmp_path / "nowhere")}
    assert split_sizes(spec) == ({"train": 50_000, "test": 10_000}, 100, False)
    subset = {"source": "imagenet", "root": str(tmp_path / "nowhere"), "first_classes": 100, "per_class": 260}
    assert split_sizes(subset) == ({"train": 26_000, "test": 5_000}, 100, False)
    with pytest.raises(DatasetError):
        split_sizes({"source": "imagefolder", "root": str(tmp_path / "nowhere")})


def test_validate_lists_every_cell_with_its_estimate(tmp_path, capsys):
    config = {**copy.deepcopy(TINY), "results": str(tmp_path / "out")}
    config["datasets"]["folder"] = {"source": "imagefolder", "root": str(tmp_path / "absent")}
    config["grid"] = [TINY["grid"], {**TINY["grid"], "id_dataset": ["folder"], "augmentation": ["none"]}]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["validate", str(path), "--jobs", "4"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  vggm11")}
    assert set(lines) == {*CELLS, "vggm11_folder_r32_none_s0"}
    assert "no estimate: the files of folder are not there" in lines["vggm11_folder_r32_none_s0"]
    assert lines[CELLS[0]].split()[1:3] == ["4", "96"]  # eval sets, train image-epochs
    assert "with 4 at a time" in out and "from the reference machine" in out
    with pytest.raises(SystemExit):
        main(["validate", str(path), "--jobs", "0"])
    assert "--jobs: 0: must be 1 or more" in capsys.readouterr().err
    assert main(["validate", str(path), "--no-budget"]) == 0
    assert "eval sets toy, toy-glyphs" in capsys.readouterr().out


def _validate(tmp_path, capsys, config: dict, *args) -> tuple[int, str, str]:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**config, "results": str(tmp_path / "out")}))
    code = main(["validate", str(path), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_missing_root_is_a_warning_and_the_budget_never_zero(tmp_path, capsys):
    config = copy.deepcopy(TINY)
    config["datasets"]["folder"] = {"source": "imagefolder", "root": str(tmp_path / "absent")}
    config["datasets"]["c100"] = {"source": "cifar100", "root": str(tmp_path / "no-cifar")}
    (tmp_path / "empty").mkdir()
    config["datasets"]["empty"] = {"source": "imagefolder", "root": str(tmp_path / "empty")}
    config["grid"] = {**TINY["grid"], "id_dataset": ["folder"], "augmentation": ["none"]}
    config["ood_sets"] = ["c100", "empty"]
    code, out, _ = _validate(tmp_path, capsys, config)
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert code == 0 and len(warnings) == 3
    assert f"warning: datasets.folder.root: directory {tmp_path / 'absent'} not found (no published size" in out
    assert f"warning: datasets.c100.root: directory {tmp_path / 'no-cifar'} not found (published sizes used)" in out
    assert "warning: datasets.empty.root:" in out
    assert "budget: no estimate" in out and "0 job-min" not in out
    # one cell sized from published sizes (its own ood_sets: an OOD set is never the ID set)
    config["grid"] = [config["grid"], {**config["grid"], "id_dataset": ["c100"], "ood_sets": ["empty"]}]
    code, out, _ = _validate(tmp_path, capsys, config)
    assert (
        code == 0
        and "job-min of prepare, pretrain, embed and probe jobs for the 1 cells with an estimate (none for 1)" in out
    )


def test_an_unknown_timm_name_is_one_line_naming_its_key(tmp_path, capsys):
    config = {**copy.deepcopy(TINY), "model": {}, "grid": {**TINY["grid"], "arch": ["vggm11", "timm/regnetx_0002"]}}
    for args in ([], ["--no-budget"]):
        code, out, err = _validate(tmp_path, capsys, config, *args)
        assert code == 1 and "valid" not in out
        assert err.strip().splitlines() == [
            f"tunnelscope: config error in {tmp_path / 'study.yaml'}: grid.arch[1]: unknown timm model 'regnetx_0002'; nearest: regnetx_002, regnety_002, regnetx_080"
        ]
    with pytest.raises(ConfigError, match=r"^grid\.arch\[1\]: unknown timm model 'regnetx_0002'"):
        _study(config, tmp_path)  # what the DAG builds from: the dry run stops too
    config = {**config, "grid": {**TINY["grid"], "arch": ["net"]}}
    config["pretrained"] = {"net": {"arch": "torchvision/resnet5", "weights": "w.pth"}}
    code, _, err = _validate(tmp_path, capsys, config)
    assert code == 1 and err.count("\n") == 1
    assert "pretrained.net.arch: unknown torchvision model 'resnet5'; nearest: resnet50" in err


def test_width_on_a_timm_model_is_refused_naming_the_key(tmp_path, capsys):
    config = {**copy.deepcopy(TINY), "grid": {**TINY["grid"], "arch": ["vggm11", "timm/deit_tiny_patch16_224"]}}
    code, _, err = _validate(tmp_path, capsys, config)
    assert code == 1 and err.count("\n") == 1
    assert "model.width: 0.125 does not apply to timm/deit_tiny_patch16_224" in err
    config["overrides"] = [{"where": {"arch": "timm/deit_tiny_patch16_224"}, "model": {"width": 0.5}}]
    with pytest.raises(Exception, match=r"overrides\[0\]\.model\.width: 0\.5 does not apply"):
        _study(config, tmp_path)
    config["overrides"][0]["model"]["width"] = 1.0  # the width scoped to the paper architecture
    assert _study(config, tmp_path).cells["timm-deit_tiny_patch16_224_toy_r32_none_s0"].model["width"] == 1.0


def test_a_vit_with_fewer_than_4x4_patches_is_warned(tmp_path, capsys):
    grid = {**TINY["grid"], "arch": ["vit-t", "timm/deit_tiny_patch16_224"], "augmentation": ["none"]}
    config = {**copy.deepcopy(TINY), "model": {}, "grid": grid}
    code, out, _ = _validate(tmp_path, capsys, config)
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert code == 0 and warnings == [
        "warning: grid.resolution: timm/deit_tiny_patch16_224 at 32 px sees a 2x2 patch grid (cell timm-deit_tiny_patch16_224_toy_r32_none_s0), fewer than 4x4 tokens"
    ]  # the paper's ViT-T: patch 8 at 32 px = 4x4, fine


def test_a_model_that_cannot_run_at_the_resolution_is_an_error(tmp_path, capsys):
    grid = {**TINY["grid"], "arch": ["torchvision/vit_b_16"], "augmentation": ["none"]}  # fixed at 224 px
    code, out, err = _validate(tmp_path, capsys, {**copy.deepcopy(TINY), "model": {}, "grid": grid})
    assert code == 1 and "valid" not in out and err.count("\n") == 1
    assert "cell torchvision-vit_b_16_toy_r32_none_s0: torchvision/vit_b_16 cannot be built or run at 32 px" in err


def test_reference_rates_are_scaled_for_what_compute_resolves_to_here(tmp_path, monkeypatch):
    """Without a run's benchmark files, pretrain and embed rates are the reference machine's
    float32 NCHW ones times the measured speed-up of the study's compute settings as this CPU
    resolves them: bf16 only where it has native bf16."""
    import torch

    study = _study(TINY, tmp_path)
    budgets = budget.cell_budgets(study)
    pretrain = next(job for job in budgets[0].jobs if job.stage == "pretrain")

    def rate(compute):
        return budget.calibrate(budgets, tmp_path, compute).of(pretrain, "vggm11")

    reference = budget.REFERENCE_RATES["pretrain"]
    assert rate(None) == rate({"precision": "fp32", "channels_last": False}) == reference
    speedup = budget.REFERENCE_SPEEDUP["pretrain", "cnn", "bf16", True]
    assert rate({"precision": "bf16", "channels_last": "auto"}) == pytest.approx(reference * speedup)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False})
    assert rate({"precision": "auto", "channels_last": "auto"}) == reference  # fp32 NHWC: not measured
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert rate({"precision": "auto", "channels_last": "auto"}) == pytest.approx(reference * speedup)


def test_disk_per_stage_follows_dims_images_dtype_and_parameters(tmp_path):
    from tunnelscope.models.build import build_model, count_parameters

    cell = _units(_study(TINY, tmp_path))[CELLS[0]]
    facts = model_facts.model_facts("vggm11", 4, 0.125, 32, "default", ("avg2x2",), "default")
    images = {"toy": 128, "toy-glyphs": 54, "digits": 1797, "toy-blur": 128}  # train + test of each eval set
    vectors = 2 * sum(facts.dims["avg2x2"]) * sum(images.values())  # float16
    rows = budget.EMBED_ROW_BYTES * len(facts.dims["avg2x2"]) * sum(images.values())
    assert cell.disk["embed"] == pytest.approx(vectors + rows)
    assert cell.disk["prepare"] == pytest.approx(sum(images.values()) * 32 * 32 * 3)  # native 32 px stores
    assert cell.disk["pretrain"] == 4 * count_parameters(build_model("vggm11", 4, 0.125, 32)) == 4 * facts.params
    wide = _units(_study({**TINY, "embed": {"dtype": "float32", "pooling": ["avg2x2", "avg1x1"]}}, tmp_path))
    both = model_facts.model_facts("vggm11", 4, 0.125, 32, "default", ("avg1x1", "avg2x2"), "default")
    assert both.dims["avg2x2"] == facts.dims["avg2x2"] and sum(both.dims["avg1x1"]) * 4 == sum(facts.dims["avg2x2"])
    layers = 2 * len(facts.dims["avg2x2"])
    expected = (4 * sum(map(sum, both.dims.values())) + budget.EMBED_ROW_BYTES * layers) * sum(images.values())
    assert wide[CELLS[0]].disk["embed"] == pytest.approx(expected)


def test_validate_prints_disk_with_and_without_the_embeddings(tmp_path, capsys):
    code, out, _ = _validate(tmp_path, capsys, TINY)
    assert code == 0
    disk = next(line for line in out.splitlines() if line.startswith("disk: "))
    assert "embeddings kept: embed.keep true" in disk and "with embed.keep false" in disk
    stages = [line.split()[0] for line in out.splitlines()[out.splitlines().index(disk) + 1 :]]
    assert stages == ["prepare", "pretrain", "embed", "probe"]
    code, out, _ = _validate(tmp_path, capsys, {**TINY, "embed": {"keep": False}})
    assert "embeddings deleted: embed.keep false" in out


def test_named_and_given_rates(tmp_path, capsys):
    study = _study(TINY, tmp_path)
    budgets = budget.cell_budgets(study)
    assert budget.calibrate(budgets, tmp_path, fallback="a100").by_stage == budget.RATE_SETS["a100"][0]
    path = tmp_path / "benchmarks" / "probe" / f"{CELLS[0]}_toy_lbfgs.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("s\th:m:s\tmax_rss\n3.0\t0:00:03\t1\n")
    measured = budget.calibrate(budgets, tmp_path)
    assert measured.origin["probe"] == "measured" and measured.origin["embed"] == "cpu"
    given = budget.calibrate(budgets, tmp_path, given={"probe": 5.0})
    probe = next(job for job in budgets[0].jobs if job.name == f"{CELLS[0]}_toy_lbfgs")
    assert given.of(probe, "vggm11") == 5.0 and given.origin["probe"] == "given"
    code, out, _ = _validate(tmp_path, capsys, TINY, "--rates", "a100", "--rate", "embed=2e12")
    assert code == 0 and "--rates a100: an ESTIMATE for one NVIDIA A100" in out
    assert "  embed    2e+12 FLOP/s, given (--rate)" in out and "  pretrain 6.1e+13 FLOP/s, --rates a100" in out
    with pytest.raises(SystemExit):
        main(["validate", str(tmp_path / "study.yaml"), "--rate", "train=5"])
    assert "--rate: train=5: STAGE is one of prepare, pretrain, embed, probe" in capsys.readouterr().err


def test_the_shipped_model_facts_are_current_and_cover_every_preset(monkeypatch):
    """The table's fingerprint is this code's (else regenerate: python -m tunnelscope.budget);
    budgeting every preset measures no model; two entries measured anew match it."""
    import json
    from pathlib import Path

    table = json.loads(model_facts.COSTS_TABLE.read_text())
    assert table["fingerprint"] == model_facts.costs_fingerprint(), "stale: run python -m tunnelscope.budget"
    repo = Path(__file__).resolve().parents[1]
    unmeasured = lambda *args: pytest.fail(f"not in the shipped table: {args}")  # noqa: E731
    monkeypatch.setattr(model_facts, "_measure_facts", unmeasured)
    for preset in [repo / "config.yaml", *sorted((repo / "config").glob("*.yaml"))]:
        study = Study(yaml.safe_load(preset.read_text()), load_schema())
        if not any(c.arch.startswith("python:") for c in study.cells.values()):
            budget.cell_budgets(study)
    monkeypatch.undo()
    small = [k for k in table["facts"] if json.loads(k)[0] in ("vggm11", "resnet18") and json.loads(k)[3] == 32]
    for key in small[:2]:
        arch, classes, width, resolution, rule, poolings, side, kwargs, built = json.loads(key)
        rule = tuple(rule) if isinstance(rule, list) else rule
        measured = model_facts._measure_facts(
            arch, classes, width, resolution, rule, tuple(poolings), side, json.dumps(kwargs), "null"
        )
        assert measured.to_json() == table["facts"][key]


def test_validating_the_paper_preset_imports_no_torch():
    """The budget of config/paper.yaml's 64 cells from the shipped table: no model built, no torch
    imported (what kept `validate config/paper.yaml` at 51 CPU-seconds; now about 1)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    code = "import sys; from tunnelscope.cli import main; main(['validate', 'config/paper.yaml']); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "False"
    # the figures docs/running.md gives
    assert "921 GB with the embeddings kept, 67.4 GB with embed.keep false" in result.stdout
    assert "  embed       853 GB  embeddings (float32, avg2x2)" in result.stdout
