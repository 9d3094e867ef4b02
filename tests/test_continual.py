"""Continual learning (the paper's Table 2): the training extensions it needs, the extractor /
tunnel split and swap, its config, and the experiment end to end through the snakemake CLI."""

import copy
import json
import re
import subprocess
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from test_reliability import PARAMS, TRAINING, checkpoint_files, toy_store

from conftest import REPO, planned_jobs, snakemake, snakemake_cmd
from tunnelscope.figures.tables import continual_table
from tunnelscope.metrics.tunnel import id_tunnel_start
from tunnelscope.models.build import build_model, probe_points
from tunnelscope.models.capture import LayerCapture
from tunnelscope.protocols.continual import (
    compose,
    frozen_modules,
    locate_tunnel,
    split_modules,
)
from tunnelscope.study.config import Study
from tunnelscope.study.schema import ConfigError, load_schema
from tunnelscope.training import loop as train
from tunnelscope.training.loop import pretrain
from tunnelscope.training.schedule import lr_schedule

TASK2 = {"index": 2, "classes": [2, 4], "head": "shared"}


def _train(tmp_path, name, task=None, **kwargs):
    """A short pretrain of the 4-class toy store; (info, weights) of its checkpoint."""
    params = dict(
        PARAMS,
        augmentation="none",
        training={**TRAINING, "epochs": 2, "warmup_epochs": 0, **kwargs.pop("training", {})},
    )
    if task:
        params["task"] = task
    out = tmp_path / name
    out.mkdir()
    info = pretrain(params, toy_store(tmp_path, 96), **checkpoint_files(out), **kwargs)
    return info, load_file(out / "ckpt.safetensors")


# ---------------------------------------------------------------- training extensions


def test_step_schedule_multiplies_the_lr_at_its_milestones_after_the_warm_up():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1.0)
    sched = lr_schedule(opt, warmup_steps=2, total_steps=10, start_factor=0.5, milestones=[4, 7], gamma=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 0.75, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])  # milestones count from the start


def test_a_task_trains_and_scores_on_its_classes_only(tmp_path):
    """Only classes 2-3 are trained on and scored. Shared head: the softmax spans all 4 classes,
    so the task pushes the other classes' rows down too; per-task head: only its own logits, so
    the other rows get no gradient (weight decay off: it would shrink them uniformly)."""
    _, start = _train(tmp_path, "start")
    init, no_decay = str(tmp_path / "start/ckpt.safetensors"), {"weight_decay": 0.0}
    shared, shared_weights = _train(tmp_path, "shared", TASK2, init_checkpoint=init, training=no_decay)
    per_task, per_task_weights = _train(
        tmp_path, "per_task", {**TASK2, "head": "per_task"}, init_checkpoint=init, training=no_decay
    )
    assert shared["n_train"] == per_task["n_train"] == 48 and shared["task"]["classes"] == [2, 4]
    assert not torch.equal(shared_weights["head.weight"][:2], start["head.weight"][:2])
    assert torch.equal(per_task_weights["head.weight"][:2], start["head.weight"][:2]) and not torch.equal(
        per_task_weights["head.weight"][2:], start["head.weight"][2:]
    )
    assert 0.0 <= per_task["test_acc"] <= 1.0 and per_task["init_checkpoint"] == init


def test_frozen_modules_keep_their_weights_and_statistics(tmp_path):
    _, start = _train(tmp_path, "start")
    frozen = ["features.0", "features.1", "features.3", "features.4"]  # the first two conv + BN
    init = str(tmp_path / "start/ckpt.safetensors")
    info, weights = _train(tmp_path, "frozen", TASK2, init_checkpoint=init, frozen=frozen)
    for key in weights:
        same = torch.equal(weights[key], start[key])
        assert same == (key.rsplit(".", 1)[0] in frozen), key  # frozen tensors bitwise, the rest moved
    assert info["trainable_params"] < info["params"]
    _, moving = _train(tmp_path, "moving_stats", TASK2, init_checkpoint=init, frozen=frozen, freeze_norm_stats=False)
    assert torch.equal(moving["features.1.weight"], start["features.1.weight"]) and not torch.equal(
        moving["features.1.running_mean"], start["features.1.running_mean"]
    )
    with pytest.raises(ValueError, match="every parameter is frozen"):
        _train(
            tmp_path,
            "all",
            TASK2,
            frozen=[
                n
                for n, m in build_model("vggm11", 4, 0.125, 32).named_modules()
                if next(m.parameters(recurse=False), None) is not None
            ],
        )


MIXED = {"mixup_alpha": 0.1, "cutmix_alpha": 1.0, "mix_prob": 1.0, "mix_switch_prob": 0.4}


def test_mixup_and_cutmix_are_seeded_and_resume_bitwise(tmp_path, monkeypatch):
    """timm's Mixup draws from numpy's global generator: it is seeded and kept in the resume state."""
    info, full = _train(tmp_path, "full", TASK2, training=dict(MIXED, epochs=3))
    log = pd.read_csv(tmp_path / "full/log.csv")
    assert len(log) == 3 and info["n_fit"] == 44  # 48 task images less the 10% hold-out ...
    _, plain = _train(tmp_path, "plain", TASK2, training={"epochs": 3})
    assert not torch.equal(full["head.weight"], plain["head.weight"])
    save = train.save_train_state

    def save_then_crash(*args, **kwargs):
        save(*args, **kwargs)
        raise RuntimeError("pre-empted")

    monkeypatch.setattr(train, "save_train_state", save_then_crash)
    with pytest.raises(RuntimeError, match="pre-empted"):
        _train(tmp_path, "resumed", TASK2, training=dict(MIXED, epochs=3))
    monkeypatch.undo()
    np.random.seed(12345)  # whatever the generator holds now, the resume restores its saved state
    params = dict(PARAMS, augmentation="none", task=TASK2, training=dict(TRAINING, epochs=3, warmup_epochs=0, **MIXED))
    out = tmp_path / "resumed"
    pretrain(params, toy_store(tmp_path, 96), **checkpoint_files(out))
    resumed = load_file(out / "ckpt.safetensors")
    assert all(torch.equal(resumed[k], full[k]) for k in full)
    with pytest.raises(ValueError, match="need an even training.batch_size"):
        _train(tmp_path, "odd", TASK2, training=dict(MIXED, batch_size=15))


# ---------------------------------------------------------------- the split and the swap


def _capture(model, points, x):
    with LayerCapture(model, points) as capture:
        model(x)
        return capture.take()


@pytest.mark.parametrize("arch,layer", [("resnet18", 15), ("resnet18", 14), ("vggm11", 4), ("vit-t", 6)])
def test_the_extractor_is_everything_that_computes_the_start_layer(arch, layer):
    """Composed from A's extractor and B's tunnel, a network has A's representation at the start
    layer and B's classifier; the next layer's representation is neither A's alone."""
    torch.manual_seed(0)
    a, b = (build_model(arch, 5, 0.125, 32).eval() for _ in range(2))
    points = probe_points(a)
    parts = split_modules(a, points[layer - 1], 32)
    # Compared before the final norm a ViT probe point applies: that norm runs last, in the tunnel.
    points = [replace(p, post="") for p in points]
    assert set(parts["extractor"]).isdisjoint(parts["tunnel"]) and parts["extractor"] and parts["tunnel"]
    mixed = build_model(arch, 5, 0.125, 32).eval()
    mixed.load_state_dict(compose(a.state_dict(), b.state_dict(), parts["extractor"]))
    x = torch.randn(2, 3, 32, 32)
    ours, theirs = _capture(mixed, points, x), _capture(a, points, x)
    assert torch.equal(ours[(layer, "avg2x2")], theirs[(layer, "avg2x2")])
    assert not torch.equal(ours[(layer + 1, "avg2x2")], theirs[(layer + 1, "avg2x2")])
    head = "fc" if arch == "resnet18" else "head"
    assert torch.equal(mixed.state_dict()[f"{head}.weight"], b.state_dict()[f"{head}.weight"])
    if (arch, layer) == ("resnet18", 15):  # inside layer4.0: its conv1/bn1 run before, its shortcut after
        assert parts["extractor"][-2:] == ["layer4.0.conv1", "layer4.0.bn1"]
        assert parts["tunnel"][:4] == [
            "layer4.0.conv2",
            "layer4.0.bn2",
            "layer4.0.downsample.0",
            "layer4.0.downsample.1",
        ]


def test_tunnel_start_by_masarczyks_rule_on_either_curve():
    curves = {1: np.array([0.2, 0.5, 0.8, 0.9, 0.92]), 2: np.array([0.2, 0.88, 0.89, 0.9, 0.9])}
    assert locate_tunnel(curves, 0.95, "task1")["starts"] == {"task1": 4, "task2": 2}
    assert [locate_tunnel(curves, 0.95, rule)["start_layer"] for rule in ("task1", "task2", "earlier")] == [4, 2, 2]
    assert locate_tunnel(curves, 0.95, "task1")["start_layer"] == id_tunnel_start(curves[1], 0.95)
    tunnel = {"start_layer": 1, "num_layers": 17, "extractor": [], "tunnel": ["conv1", "fc"]}
    assert frozen_modules(tunnel, ["tunnel"]) == []
    with pytest.raises(ValueError, match="nothing to fine-tune: the tunnel starts at layer 1 of 17"):
        frozen_modules(tunnel, ["extractor"])


# ---------------------------------------------------------------- config


CONTINUAL = {
    "results": "out",
    "datasets": {
        "toy": {"source": "synthetic", "family": "shapes", "classes": 8, "train_per_class": 48, "test_per_class": 16}
    },
    "continual": {
        "arch": ["resnet18"],
        "id_dataset": ["toy"],
        "resolution": [32],
        "augmentation": ["none"],
        "tasks": [[0, 4], [4, 8]],
        "model": {"width": 0.125},
        "training": {
            "epochs": 6,
            "batch_size": 16,
            "lr": 0.01,
            "warmup_epochs": 1,
            "val_fraction": 0,
            **dict(MIXED, mix_prob=0.5),
        },
        "finetune_training": {"epochs": 3, "step_milestones": [1, 2]},
    },
    "probe": {"l2_grid": [0.001], "max_iter": 50},
}
LABELS = ["E1+T1", "E1+T2", "E2+T2", "E2+T1", "E2+T1 fine-tuned", "E2 fine-tuned"]


def test_continual_settings_reach_exactly_their_jobs(schema):
    study = Study(copy.deepcopy(CONTINUAL), schema)
    run = "resnet18_toy_r32_none_s0"
    assert list(study.runs) == [run] and study.cells == {}
    assert [label for _, label in study.continual_networks()] == LABELS
    task1, task2 = (study.continual_train_params(run, n) for n in ("e1-t1", "e2-t2"))
    assert task1["task"] == {"classes": [0, 4], "head": "shared", "index": 1} and task2["task"]["classes"] == [4, 8]
    tuned = study.continual_finetune_params(run, "e2-fine-tuned")
    assert (
        tuned["finetune"] == {"freeze_norm_stats": True, "start": "E2+T1", "train": ["extractor"]}
        and tuned["task"]["index"] == 1
    )
    # The fine-tuning recipe is the task recipe with the paper's changes over it.
    assert (
        tuned["training"] | {"epochs": 6, "schedule": "cosine", "warmup_epochs": 1, "step_milestones": [20, 40]}
        == task1["training"]
    )
    assert (tuned["training"]["schedule"], tuned["training"]["warmup_epochs"], tuned["training"]["lr"]) == (
        "step",
        0,
        0.01,
    )
    own, other = study.continual_evaluate_params(run, "e1-t1"), study.continual_evaluate_params(run, "e1-t2")
    assert own["layers"] == {"1": "all", "2": "last"} and other["layers"] == {"1": "last", "2": "last"}
    assert "training" not in own and "batch_size" not in own and own["probe"]["l2_grid"] == [0.001]
    assert study.prepared() == [("toy", "r32")]


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda c: c.pop("continual"), "grid: missing; a study needs a grid of cells, a continual section, or both"),
        (
            lambda c: c["continual"].update(id_dataset=["nope"]),
            "continual.id_dataset[0]: unknown dataset 'nope'; defined: toy",
        ),
        (lambda c: c["continual"].update(arch=["vgg99"]), "continual.arch[0]: 'vgg99' is not one of vggm11"),
        (
            lambda c: c["continual"].update(tasks=[[0, 5], [4, 8]]),
            "continual.tasks[1]: [4, 8] overlaps task 1's classes [0, 5]",
        ),
        (lambda c: c["continual"].update(tasks=[[3, 3], [4, 8]]), "continual.tasks[0]: [3, 3] holds no class"),
        (
            lambda c: c["continual"].update(tasks=[[0, 4], [4, 10]]),
            "continual.tasks: classes up to 10, but continual.id_dataset[0] 'toy' has 8",
        ),
        (lambda c: c["continual"].update(tasks=[[0, 4]]), "continual.tasks: [[0, 4]] is too short"),
        (lambda c: c["continual"].update(head="both"), "continual.head: 'both' is not one of shared, per_task"),
        (
            lambda c: c["continual"].update(finetune=[{"name": "E1 T2", "start": "E2+T1", "train": ["tunnel"]}]),
            "continual.finetune[0].name: 'E1 T2' is taken (by 'E1+T2')",
        ),
        (
            lambda c: c["continual"].update(finetune=[{"name": "x", "start": "E3+T1", "train": ["tunnel"]}]),
            "continual.finetune[0].start: 'E3+T1' is not one of",
        ),
        (
            lambda c: c["continual"].update(finetune=[{"name": "x", "start": "E2+T1", "train": []}]),
            "continual.finetune[0].train: [] should be non-empty",
        ),
        (
            lambda c: c["continual"]["finetune_training"].update(step_milestones=[2, 5]),
            "continual.finetune_training.step_milestones: [2, 5] must lie after the warm-up (0 epochs) and before the last of the 3 epochs",
        ),
        (
            lambda c: c["continual"]["training"].update(checkpoint="best_val"),
            "continual.training.checkpoint best_val needs a validation split (continual.training.val_fraction > 0)",
        ),
        (
            lambda c: c["continual"]["finetune_training"].update(mixup_alpha=-1),
            "continual.finetune_training.mixup_alpha: -1 is less than the minimum of 0",
        ),
    ],
)
def test_bad_continual_config_is_one_line_naming_the_key(schema, edit, expected):
    config = copy.deepcopy(CONTINUAL)
    edit(config)
    with pytest.raises(ConfigError) as err:
        Study(config, schema)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


# ---------------------------------------------------------------- the workflow


def test_continual_preset_dry_run_without_data(tmp_path):
    cmd = snakemake_cmd(tmp_path, "-n", "--cores", "8", "continual", configfile=REPO / "config/continual.yaml")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    # Per resolution: two task trainings, one swap, two fine-tunings, six evaluations.
    assert {
        k: counts[k]
        for k in (
            "prepare",
            "continual_train",
            "continual_swap",
            "continual_finetune",
            "continual_evaluate",
            "continual_table",
        )
    } == {
        "prepare": "2",
        "continual_train": "4",
        "continual_swap": "2",
        "continual_finetune": "4",
        "continual_evaluate": "12",
        "continual_table": "1",
    }
    study = Study(yaml.safe_load((REPO / "config/continual.yaml").read_text()), load_schema())
    recipe = study.runs["resnet18_imagenet100_r32_rrc_flip_s0"].training
    assert (
        recipe["lr"],
        recipe["weight_decay"],
        recipe["batch_size"],
        recipe["epochs"],
        recipe["warmup_epochs"],
        recipe["label_smoothing"],
    ) == (0.01, 0.05, 512, 50, 5, 0.1)
    assert (recipe["mixup_alpha"], recipe["cutmix_alpha"], recipe["mix_prob"], recipe["mix_switch_prob"]) == (
        0.1,
        1.0,
        1.0,
        0.4,
    )
    tuned = study.runs["resnet18_imagenet100_r32_rrc_flip_s0"].finetune_training
    assert (tuned["epochs"], tuned["schedule"], tuned["step_milestones"], tuned["step_gamma"], tuned["lr"]) == (
        50,
        "step",
        [20, 40],
        0.1,
        0.01,
    )


@pytest.mark.integration
def test_the_continual_experiment_end_to_end(tmp_path):
    """The paper's Table 2 on 8 procedural classes (task 1: 0-3, task 2: 4-7) with a tiny ResNet-18."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(CONTINUAL))
    # One thread per job: the tiny jobs run two at a time on two cores.
    threads = ["--set-threads", "continual_train=1", "continual_finetune=1", "continual_evaluate=1"]
    snakemake(tmp_path, "continual", *threads)
    out, run = tmp_path / "out", tmp_path / "out/continual/resnet18_toy_r32_none_s0"
    table = pd.read_csv(out / "paper/tables/continual.csv").set_index("configuration")
    assert table.index.tolist() == LABELS and table.columns.tolist() == ["32² task 1", "32² task 2"]
    assert table.notna().all().all() and table.stack().between(0, 1).all()  # fractions, as in every table
    assert table.loc["E1+T1", "32² task 1"] > 0.6 and table.loc["E2+T2", "32² task 2"] > 0.6  # 4 classes: chance 25%
    assert table.loc["E1+T2", "32² task 1"] != table.loc["E1+T1", "32² task 1"]  # another task's tunnel changes task 1
    assert "E2+T1 fine-tuned & " in (out / "paper/tables/continual.tex").read_text()

    # The tunnel is where Masarczyk's rule puts it on the E1+T1 ID curve.
    tunnel = json.loads((run / "tunnel.json").read_text())
    evaluation = pd.read_parquet(run / "e1-t1/evaluation.parquet")
    curve = evaluation[evaluation.task == 1].sort_values("layer")
    assert curve.layer.tolist() == list(range(1, 18)) and evaluation[evaluation.task == 2].layer.tolist() == [17]
    assert tunnel["start_layer"] == id_tunnel_start(curve.test_acc.to_numpy(), 0.95) == tunnel["starts"]["task1"]

    # Swapped networks hold each part of the network they name; a frozen part stays bitwise.
    weights = {
        n: load_file(run / n / "checkpoint.safetensors")
        for n in ("e1-t1", "e2-t2", "e1-t2", "e2-t1", "e2-fine-tuned", "e2-t1-fine-tuned")
    }
    extractor = set(tunnel["extractor"])

    def part(key):
        return "extractor" if key.rpartition(".")[0] in extractor else "tunnel"

    for key in weights["e1-t1"]:
        assert torch.equal(weights["e1-t2"][key], weights["e1-t1" if part(key) == "extractor" else "e2-t2"][key]), key
        assert torch.equal(weights["e2-t1"][key], weights["e2-t2" if part(key) == "extractor" else "e1-t1"][key]), key
        assert torch.equal(weights["e2-fine-tuned"][key], weights["e2-t1"][key]) == (part(key) == "tunnel"), key
    assert not torch.equal(weights["e2-t1-fine-tuned"]["fc.weight"], weights["e2-t1"]["fc.weight"])

    # Forgetting at the output: after task 2 the shared classifier's task-1 accuracy collapses.
    scores = pd.read_csv(out / "continual/scores.csv").set_index(["network", "task"])
    assert scores.loc[("E2+T2", 1), "head_acc"] < scores.loc[("E1+T1", 1), "head_acc"] - 0.2
    assert (scores.tunnel_start == tunnel["start_layer"]).all() and len(scores) == 12
    with Image.open(out / "continual/tunnel_curves.png") as img:
        assert img.size[0] > 400 and np.asarray(img).std() > 0

    # Settings rerun exactly the jobs whose results they change.
    assert "Nothing to be done" in snakemake(tmp_path, "-n", "continual", *threads)
    for edit, rules in (
        (
            lambda c: c["continual"]["finetune_training"].update(epochs=4),
            {"continual_finetune", "continual_evaluate", "continual_table"},
        ),
        (lambda c: c["continual"].update(score="head"), {"continual_table"}),
    ):
        config = copy.deepcopy(CONTINUAL)
        edit(config)
        (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
        jobs = planned_jobs(snakemake(tmp_path, "-n", "continual"))
        assert {rule for rule, _ in jobs} == rules | {"continual"}, jobs
        if "continual_finetune" in rules:
            assert {w for r, w in jobs if r == "continual_evaluate"} == {
                f"run=resnet18_toy_r32_none_s0, network={n}" for n in ("e2-t1-fine-tuned", "e2-fine-tuned")
            }


def test_the_table_shows_seed_means_with_intervals():
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.02), (2, 0.04)):
        for network in LABELS:
            for task in (1, 2):
                rows.append(
                    {
                        "arch": "resnet18",
                        "id_dataset": "toy",
                        "resolution": 32,
                        "augmentation": "rrc_flip",
                        "seed": seed,
                        "network": network,
                        "task": task,
                        "probe_acc": 0.5 + shift + 0.1 * task,
                        "head_acc": 0.3,
                    }
                )
    csv, latex = continual_table(pd.DataFrame(rows), LABELS, "probe")
    assert csv.configuration.tolist() == LABELS and csv.seeds.eq(3).all()
    column = [c for c in csv.columns if c.endswith("task 1")][0]
    assert (
        csv[column].iloc[0] == pytest.approx(0.62)  # a fraction in the CSV, % in LaTeX
        and csv[f"{column} ci_low"].iloc[0] < 0.62 < csv[f"{column} ci_high"].iloc[0]
    )
    assert "±" in latex.iloc[0, 1] and " / " in latex.iloc[0, 1] and latex.iloc[0, 1].startswith("62.00 ± ")
    single, _ = continual_table(pd.DataFrame(rows[: 2 * len(LABELS)]), LABELS, "probe")
    assert "seeds" not in single.columns
