"""Integration: the real snakemake CLI on a tiny config in a temporary directory."""

import json
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import CELLS, EVAL_SETS, REPO, TINY, planned_jobs, snakemake, snakemake_cmd
from tunnelscope.features.store import read_metadata
from tunnelscope.figures.captions import TABLES as PAPER_TABLES
from tunnelscope.runtime import resolve_precision

pytestmark = pytest.mark.integration


def test_all_outputs_exist_and_parse(study):
    out = study / "out"
    curves = pd.read_parquet(out / "aggregate/curves.parquet")
    assert set(curves.eval_set) == set(EVAL_SETS)
    assert len(curves) == len(CELLS) * len(EVAL_SETS) * 10  # 10 probed layers of VGGm-11
    assert curves.test_acc.between(0, 1).all()
    metrics = pd.read_parquet(out / "aggregate/metrics.parquet")
    assert len(metrics) == len(CELLS) * 3  # one row per OOD set
    assert metrics.ood_retained.between(0, 100).all()
    assert pd.read_csv(out / "aggregate/metrics.csv").shape == metrics.shape
    auto = {"precision": resolve_precision("auto", "cpu"), "channels_last": True}  # compute auto, VGGm on this CPU
    for cell in CELLS:
        info = json.loads((out / "cells" / cell / "cell.json").read_text())
        assert info["num_layers"] == 10 and info["id_classes"] == 4
        assert {k: info[k] for k in auto} == auto
        log = pd.read_csv(out / "cells" / cell / "train_log.csv")
        assert log.epoch.tolist() == [1]
        layers = sorted((out / "cells" / cell / "embeddings" / "digits" / "avg2x2").glob("layer_*.parquet"))
        assert len(layers) == 10 and {k: read_metadata(layers[0])[k] for k in auto} == auto
        table = pd.read_parquet(layers[0])
        assert {"sample_id", "split", "label", "embedding"} <= set(table.columns)
        assert len(table) == 1797  # every digit image, train and test
        assert np.frombuffer(table.embedding.iloc[0], "<f2").shape == (8 * 4,)  # 64 x 0.125 channels, 2x2 pooling
        for fig in ("figure.png",):
            with Image.open(out / "cells" / cell / fig) as img:
                assert img.size[0] > 300
        assert (out / "cells" / cell / "figure.pdf").stat().st_size > 1000
        assert (out / "logs" / "pretrain" / f"{cell}.log").read_text().strip()
    with Image.open(out / "figures/tunnel_curves.png") as img:
        assert np.asarray(img).std() > 0
    stats = pd.read_parquet(out / "aggregate/layer_stats.parquet")
    assert len(stats) == len(CELLS) * 10 and stats.cka_to_last.between(0, 1.0001).all()
    for name in ("shap_slopes", "shap_fit", "paired_tests", "level_means"):
        assert len(pd.read_csv(out / "analysis" / f"{name}.csv")) > 0
    slopes = pd.read_csv(out / "analysis/shap_slopes.csv")
    assert list(slopes.columns[:3]) == ["target", "variable", "slope"]
    paired = pd.read_csv(out / "analysis/paired_tests.csv")
    assert set(paired.comparison) == {"augmentation"}  # the only variable with two levels
    assert paired.n_pairs.eq(3).all()  # one per OOD set: the same backbone with and without augmentation
    retained = pd.read_csv(out / "paper/tables/ood_retained.csv")
    assert retained.columns.tolist() == [
        "id_dataset",
        "arch",
        "backbone",
        "resolution",
        "augmentation",
        "toy-glyphs",
        "digits",
        "toy-blur",
        "mean",
    ]
    assert retained.augmentation.tolist() == ["none", "rrc_flip"]  # grid order, the config's names
    expected = metrics.groupby("augmentation", sort=False).ood_retained.mean().to_numpy()
    np.testing.assert_allclose(retained["mean"], expected, atol=1e-3)


def test_the_budgets_embedding_disk_is_within_10_percent_of_the_files(study):
    """validate's embed disk of one eval set (vectors plus EMBED_ROW_BYTES a row and layer)
    against the Parquet files the run wrote: the digits set, 1,797 images, in each cell."""
    from tunnelscope import budget, model_facts
    from tunnelscope.study.config import Study
    from tunnelscope.study.schema import load_schema

    poolings = budget.embed_poolings(Study(TINY, load_schema()))
    facts = model_facts.model_facts("vggm11", 4, 0.125, 32, "default", poolings, "default")
    for cell in CELLS:
        files = (study / "out" / "cells" / cell / "embeddings" / "digits").rglob("layer_*.parquet")
        written = sum(p.stat().st_size for p in files)
        assert budget.embedding_bytes(facts, 1797, "float16") == pytest.approx(written, rel=0.1)


def test_seed_summaries_stand_beside_the_per_seed_tables(study):
    """One seed per backbone: each summary holds that seed's values, n_seeds 1 and no interval,
    and the paper tables print no interval."""
    agg = study / "out/aggregate"
    for name, value in (("metrics", "ood_retained"), ("curves", "test_acc"), ("layer_stats", "rankme")):
        per_seed, summary = pd.read_parquet(agg / f"{name}.parquet"), pd.read_parquet(agg / f"{name}_seeds.parquet")
        assert len(summary) == len(per_seed) and summary.n_seeds.eq(1).all() and "seed" not in summary
        np.testing.assert_allclose(summary[value], per_seed[value])
        assert summary[f"{value}_ci_low"].isna().all() and summary[f"{value}_ci_high"].isna().all()
        assert pd.read_csv(agg / f"{name}_seeds.csv").shape == summary.shape
    assert pd.read_parquet(agg / "curves.parquet").seed.eq(0).all()  # the cell's seed, not the probe's
    summary = pd.read_parquet(agg / "metrics_seeds.parquet")
    assert summary.strength.tolist() == pd.read_parquet(agg / "metrics.parquet").strength.tolist()
    for table in PAPER_TABLES:
        assert not [
            c
            for c in pd.read_csv(study / "out/paper/tables" / f"{table}.csv").columns
            if c.endswith(("ci_low", "ci_high", "seeds"))
        ]
        assert r"\pm" not in (study / "out/paper/tables" / f"{table}.tex").read_text().split("\\midrule")[1]


def test_a_corrupted_copy_is_its_clean_set_shifted(study):
    """The copy holds the ID set's images, each blurred; its embeddings keep the ID set's rows and
    labels and move away from the clean ones; its probes run as any OOD set's."""
    from tunnelscope.data.corruptions import corrupt, image_generator
    from tunnelscope.data.store import ImageStore

    out = study / "out"
    clean, blurred = (ImageStore(out / "prepared" / name / "r32") for name in ("toy", "toy-blur"))
    for i in (0, 7):
        assert np.array_equal(
            blurred.splits["test"].image(i),
            corrupt(clean.splits["test"].image(i), "gaussian_blur", 5, image_generator(0, "test", i)),
        )
    cell = out / "cells" / CELLS[0] / "embeddings"
    a, b = (pd.read_parquet(cell / name / "avg2x2" / "layer_001.parquet") for name in ("toy", "toy-blur"))
    assert a[["sample_id", "split", "label"]].equals(b[["sample_id", "split", "label"]])
    assert not a.embedding.equals(b.embedding)
    curves = pd.read_parquet(out / "aggregate/curves.parquet")
    assert curves[curves.eval_set == "toy-blur"].test_acc.between(0, 1).all()


def test_zero_shot_scores_the_id_probes_on_the_shifted_copy(study):
    """The ID probes' stored weights reproduce their reported accuracy; zero-shot scores them on
    the blurred test rows outside its validation part, beside the blurred set's own probes."""
    from tunnelscope.protocols.zero_shot import probe_logits

    out = study / "out"
    layers = pd.read_parquet(out / "aggregate/zero_shot.parquet")
    assert len(layers) == len(CELLS) * 10 and set(layers.eval_set) == {"toy-blur"}
    assert (layers.n_val + layers.n_test).eq(4 * 8).all() and layers.n_val.eq(4).all()  # 10% of each class's 8
    for cell in CELLS:
        probes = out / "cells" / cell / "probes" / "lbfgs"
        id_probes = pd.read_parquet(probes / "toy.parquet").set_index("layer")
        blurred_probes = pd.read_parquet(probes / "toy-blur.parquet").set_index("layer")
        with np.load(probes / "toy.weights.npz") as id_w, np.load(probes / "toy-blur.weights.npz") as blur_w:
            for layer in (1, 10):
                key = f"layer_{layer:03d}"
                for name, w, table in (("toy", id_w, id_probes), ("toy-blur", blur_w, blurred_probes)):
                    emb = pd.read_parquet(out / "cells" / cell / "embeddings" / name / "avg2x2" / f"{key}.parquet")
                    x = np.frombuffer(b"".join(emb.embedding), "<f2").reshape(len(emb), -1).astype(np.float32)
                    test = (emb.split == "test").to_numpy()
                    acc = (probe_logits(w[key], x[test]).argmax(1) == emb.label.to_numpy()[test]).mean()
                    assert acc == pytest.approx(table.loc[layer, "test_acc"], abs=1e-6)
    summary = pd.read_csv(out / "paper/tables/zero_shot.csv")
    assert len(summary) == len(CELLS) and summary.zero_shot_layer.between(1, 10).all()
    for row in summary.itertuples():
        cell_layers = layers[layers.augmentation == row.augmentation].sort_values("layer")
        chosen = 9 - cell_layers.zero_shot_val_acc.to_numpy()[::-1].argmax()  # the deepest on ties
        assert row.zero_shot_layer == chosen + 1
        # accuracies as fractions, as in every table
        assert row.zero_shot_acc == pytest.approx(cell_layers.zero_shot_test_acc.iloc[chosen], abs=1e-4)
        assert row.shifted_probe_acc == pytest.approx(cell_layers.shifted_probe_test_acc.max(), abs=1e-4)
    with Image.open(out / "paper/zero_shot.png") as img:
        assert img.size[0] > 600 and np.asarray(img).std() > 0


def test_tsne_shows_the_same_id_images_at_every_layer(study):
    for cell in CELLS:
        coords = pd.read_parquet(study / "out" / "cells" / cell / "tsne.parquet")
        assert sorted(coords.layer.unique()) == list(range(1, 11))
        assert np.isfinite(coords[["x", "y"]].to_numpy()).all()
        counts = coords.groupby(["layer", "label"]).size().unstack()
        assert counts.shape == (10, 4) and (counts == 8).all().all()  # 4 toy classes (< 5), all 8 test images each
        with Image.open(study / "out" / "cells" / cell / "tsne.png") as img:
            assert img.size[0] > 600


def test_best_layers_with_intervals_and_a_validation_choice_blind_to_test_labels(study):
    """aggregate/best_layers from the real CLI: every interval holds its estimate, the best layer
    and the tunnel agree with the metrics table, the accuracies are the predictions'; relabelling
    the test images moves the test accuracies, never the validation-chosen layer."""
    from tunnelscope.metrics.best_layers import best_layers
    from tunnelscope.probe.predictions import correct

    out = study / "out"
    best = pd.read_parquet(out / "aggregate/best_layers.parquet")
    assert len(best) == len(CELLS) * 3 and pd.read_csv(out / "aggregate/best_layers.csv").shape == best.shape
    for name in ("best_acc", "last_acc", "val_chosen_acc", "gap_best_last", "gap_val_chosen_last"):
        assert (best[f"{name}_ci_low"] <= best[name]).all() and (best[name] <= best[f"{name}_ci_high"]).all(), name
    assert (
        best.val_chosen_layer.notna().all()
        and best.confidence.eq(0.95).all()
        and best.tunnel_rule.eq("significant").all()
    )
    metrics = pd.read_parquet(out / "aggregate/metrics.parquet")
    keys = ["arch", "augmentation", "seed", "ood_set"]
    joined = best.merge(metrics, on=keys, suffixes=("", "_metrics"))
    assert (joined.best_layer == joined.ood_best_layer).all() and (joined.tunnel == joined.tunnel_metrics).all()
    assert (joined.tunnel <= (joined.best_vs_last_p < 0.05)).all()
    summary = pd.read_csv(out / "paper/tables/best_layers.csv")
    assert len(summary) == len(best) and "best layers (table)" in (out / "paper/index.html").read_text()
    with Image.open(out / "figures/best_layers.png") as img:
        assert np.asarray(img).std() > 0
    cell = CELLS[0]
    probes = pd.concat([pd.read_parquet(out / "cells" / cell / "probes/lbfgs" / f"{e}.parquet") for e in EVAL_SETS])
    predictions = {
        e: pd.read_parquet(out / "cells" / cell / "probes/lbfgs" / f"{e}.predictions.parquet") for e in EVAL_SETS
    }
    for e, table in predictions.items():
        rows = probes[probes.eval_set == e].sort_values("layer")
        np.testing.assert_array_equal(correct(table, rows.layer).mean(0), rows.test_acc.to_numpy())
    info = json.loads((out / "cells" / cell / "cell.json").read_text())
    params = {"ood_sets": TINY["ood_sets"], "alpha": 0.05, "tunnel_rule": "significant"}
    mine = best_layers(probes, predictions, info, params)
    rng = np.random.default_rng(0)
    relabelled = {e: t.assign(label=rng.permutation(t.label.to_numpy())) for e, t in predictions.items()}
    moved = best_layers(probes, relabelled, info, params)
    assert moved.val_chosen_layer.tolist() == mine.val_chosen_layer.tolist()
    assert not np.allclose(moved.best_acc, mine.best_acc)  # the test accuracies did change


def test_second_dry_run_has_nothing_to_do(study):
    assert "Nothing to be done" in snakemake(study, "-n")


def test_editing_one_cell_reruns_exactly_its_chain(study):
    config = dict(TINY, overrides=[{"where": {"augmentation": "rrc_flip"}, "training": {"epochs": 2}}])
    (study / "tiny.yaml").write_text(yaml.safe_dump(config))
    try:
        jobs = planned_jobs(snakemake(study, "-n"))
    finally:
        (study / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    cell = "vggm11_toy_r32_rrc_flip_s0"
    expected = {
        (rule, f"cell={cell}")
        for rule in ("pretrain", "cell_metrics", "best_layers", "cell_figure", "layer_stats", "tsne", "tsne_figure")
    }
    expected |= {("embed", f"cell={cell}, eval_set={e}") for e in EVAL_SETS}
    expected |= {("probe", f"cell={cell}, solver=lbfgs, eval_set={e}") for e in EVAL_SETS}
    expected |= {("zero_shot", f"cell={cell}, eval_set=toy-blur"), ("zero_shot_table", "")}
    expected |= {("aggregate_table", f"table={t}") for t in ("curves", "metrics", "layer_stats")}
    expected |= {("aggregate_cells", ""), ("analysis", ""), ("overview_figure", ""), ("all", "")}
    expected |= {("best_layers_table", ""), ("best_layers_figure", "")}
    expected |= {
        (f"{name}_figure", "") for name in ("curves_by_variable", "shap_slopes", "strength_histogram", "layer_stats")
    }
    expected |= {("provenance", ""), ("paper_page", "")}
    expected |= {("paper_table", f"table={t}") for t in PAPER_TABLES}
    assert jobs == expected


def test_compute_settings_rerun_what_they_change_and_nothing_else(study):
    """channels_last changes a CNN's results in the last bits (checked bitwise on a CPU): set
    from auto to false it reruns every pretrain and embed; the device setting and resident_mb
    change no result and rerun nothing."""
    settings = {"channels_last": False, "device": "cpu", "resident_mb": 1}
    for key, value in settings.items():
        (study / "tiny.yaml").write_text(yaml.safe_dump(dict(TINY, compute={key: value})))
        try:
            jobs = planned_jobs(snakemake(study, "-n"))
        finally:
            (study / "tiny.yaml").write_text(yaml.safe_dump(TINY))
        rules = {rule for rule, _ in jobs}
        if key == "channels_last":
            assert {w for rule, w in jobs if rule == "pretrain"} == {f"cell={cell}" for cell in CELLS}
            assert len([1 for rule, _ in jobs if rule == "embed"]) == len(CELLS) * len(EVAL_SETS)
        else:
            assert "pretrain" not in rules and "embed" not in rules, (key, rules)


def test_invalid_config_fails_before_any_job_with_one_line(tmp_path):
    bad = dict(TINY, grid=dict(TINY["grid"], arch=["vggm99"]))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(bad))
    cmd = snakemake_cmd(tmp_path, "--cores", "1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "grid.arch[0]: 'vggm99' is not one of" in result.stderr
    assert not (tmp_path / "out").exists()


def test_paper_vit_and_a_timm_model_run_through_the_workflow(tmp_path):
    config = dict(
        TINY,
        grid=dict(TINY["grid"], arch=["vit-t", "timm/resnet18"], augmentation=["none"]),
        overrides=[{"where": {"arch": "timm/resnet18"}, "model": {"width": 1.0}}],  # built as timm defines it
        ood_sets=["toy-glyphs"],
        embed={"pooling": ["avg2x2", "avg1x1"]},
    )
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    snakemake(tmp_path, "out/aggregate/curves.parquet", "out/aggregate/cells.parquet")  # 14 jobs, not 45
    curves = pd.read_parquet(tmp_path / "out/aggregate/curves.parquet")
    layers = curves.groupby("arch").layer.max().to_dict()
    assert layers == {"vit-t": 12, "timm/resnet18": 8}
    cells = pd.read_parquet(tmp_path / "out/aggregate/cells.parquet").set_index("arch")
    assert cells.loc["vit-t", "family"] == "vit" and cells.loc["timm/resnet18", "family"] == "cnn"
    # Both poolings were written from the one embed job per eval set.
    embed = tmp_path / "out/cells/timm-resnet18_toy_r32_none_s0/embeddings/toy-glyphs"
    assert len(list((embed / "avg1x1").glob("*.parquet"))) == len(list((embed / "avg2x2").glob("*.parquet"))) == 8


def test_paper_grid_dry_run_without_data(tmp_path):
    cmd = snakemake_cmd(tmp_path, "-n", "--cores", "8", configfile=REPO / "config/paper.yaml")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    assert counts["pretrain"] == "64" and counts["probe"] == "576" and counts["embed"] == "576"


def test_the_cells_target_runs_a_grid_in_batches_without_study_level_jobs(tmp_path):
    """docs/running.md, "A long grid in pieces": `cells --batch cells=K/N` plans the K-th share of
    the cells (by id) through their own outputs, and no study-level job; Snakemake runs the last
    batch only after the others."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))

    def dry_run(batch):
        cmd = snakemake_cmd(tmp_path, "-n", "--cores", "1", "cells", "--batch", f"cells={batch}")
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    result = dry_run("1/2")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = planned_jobs(result.stdout)
    rules = {rule for rule, _ in jobs}
    assert {"pretrain", "embed", "probe", "cell_metrics", "layer_stats", "cell_figure", "tsne_figure"} <= rules
    assert not rules & {"aggregate_table", "aggregate_cells", "analysis", "paper_table", "provenance"}
    assert {wc for rule, wc in jobs if rule == "pretrain"} == {f"cell={CELLS[0]}"}
    last = dry_run("2/2")
    assert last.returncode != 0 and "not all previous batches have been completed" in last.stdout + last.stderr


def test_two_presets_in_one_working_directory_keep_their_logs_under_their_results(tmp_path):
    """config/cifar10.yaml and config/claims.yaml share jobs (the same pretrain cell): planned in
    one working directory, every log and benchmark file of each lies under its own results:."""
    planned = {}
    for preset in ("cifar10", "claims"):
        cmd = snakemake_cmd(tmp_path, "-n", "--cores", "2", configfile=REPO / f"config/{preset}.yaml")
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        results = yaml.safe_load((REPO / f"config/{preset}.yaml").read_text())["results"]
        paths = re.findall(r"^\s+(?:log|benchmark): (.+)$", result.stdout, re.M)
        assert paths and all(p.startswith(f"{results}/logs/") or p.startswith(f"{results}/benchmarks/") for p in paths)
        planned[preset] = (planned_jobs(result.stdout), set(paths))
    (cifar_jobs, cifar_paths), (claims_jobs, claims_paths) = planned.values()
    assert ("pretrain", "cell=vggm11_cifar10_r32_none_s0") in cifar_jobs & claims_jobs
    assert not cifar_paths & claims_paths


def test_missing_dataset_root_stops_before_any_job(tmp_path):
    config = dict(
        TINY,
        datasets=dict(TINY["datasets"], real={"source": "imagefolder", "root": str(tmp_path / "no-such-dir")}),
        ood_sets=["real"],
    )
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    cmd = snakemake_cmd(tmp_path, "--cores", "1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"datasets.real.root: directory {tmp_path / 'no-such-dir'} not found" in result.stderr
    assert not (tmp_path / "out").exists()


def test_two_runs_of_the_same_config_give_identical_tables(study, tmp_path):
    """Every table of one cell (probes, cell metrics, layer statistics, zero-shot and the seeded
    t-SNE) built again in a fresh directory is bitwise the shared study's: the aggregate tables
    are these cells' tables put side by side, so one cell's chain is the determinism to check."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    cell = f"out/cells/{CELLS[0]}"
    compared = [f"{cell}/{name}.parquet" for name in ("metrics", "layer_stats", "tsne", "zero_shot/toy-blur")]
    compared += [f"{cell}/probes/lbfgs/{eval_set}.parquet" for eval_set in EVAL_SETS]
    snakemake(tmp_path, *compared)  # one cell's chain, no figures
    for name in compared:
        first, second = pd.read_parquet(study / name), pd.read_parquet(tmp_path / name)
        pd.testing.assert_frame_equal(first, second, check_exact=True, obj=name)


# Unseen classes of the ID family at the toy sets' size: the paper-protocol run below probes
# every layer of five cells twice, and the 1,797 digits would be most of its time.
TOY_NOVEL = {
    "source": "synthetic",
    "family": "shapes",
    "classes": 3,
    "class_offset": 100,
    "train_per_class": 12,
    "test_per_class": 6,
}


def test_the_papers_protocol_switched_on_produces_the_papers_tables(tmp_path):
    """Paper probes reporting the best test epoch, the best-test checkpoint, no hold-out, the
    released code's schedule and ViT settings, a declared comparison: the tiny study end to end."""
    config = dict(
        TINY,
        grid=[
            dict(TINY["grid"], seed=[0, 1]),
            {"arch": ["vit-t"], "id_dataset": ["toy"], "resolution": [32], "augmentation": ["none"]},
        ],
        datasets=dict(TINY["datasets"], **{"toy-novel": TOY_NOVEL}),
        ood_sets=["toy-glyphs", "toy-novel"],
        training={
            "epochs": 2,
            "batch_size": 32,
            "warmup_epochs": 1,
            "val_fraction": 0,
            "checkpoint": "best_test",
            "schedule_step": "epoch",
            "warmup_start_factor": 0.01,
        },
        overrides=[
            {
                "where": {"arch": "vit-t"},
                "model": {"preprocessing": "imagenet"},
                "training": {"min_lr": 0.00001},
                "probe": {"paper": {"batch_size": 64}},
            }
        ],
        # the paper's best-test-epoch AdamW first; the validated default beside it
        probe={
            "solver": ["paper", "lbfgs"],
            "paper": {"epochs": 3, "report": "best_test", "reshuffle": False},
            "max_iter": 50,
        },
        analysis={
            # Two epochs on 96 images leave most of these backbones at chance (metrics.health);
            # this test checks the paper's protocol and tables, so it keeps them.
            "include_untrained": True,
            "comparisons": [
                {
                    "name": "augmentation (VGGm)",
                    "variable": "augmentation",
                    "where": {"arch": ["vggm11"]},
                    "match": ["arch", "ood_set"],
                },
                {"name": "family", "variable": "family", "where": {"augmentation": ["none"]}, "match": ["ood_index"]},
            ],
        },
    )
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    # What the assertions read, not the whole study: no cell figures, t-SNE, report page.
    targets = [f"out/paper/tables/{name}.csv" for name in PAPER_TABLES] + ["out/paper/tables/effect_sizes.tex"]
    targets += ["out/paper/tables/solvers.csv"]
    targets += [f"out/aggregate/{name}.parquet" for name in ("metrics_seeds", "curves", "cells")]
    snakemake(tmp_path, *targets)
    out = tmp_path / "out"
    for cell in [*CELLS, "vit-t_toy_r32_none_s0"]:
        info = json.loads((out / "cells" / cell / "cell.json").read_text())
        log = pd.read_csv(out / "cells" / cell / "train_log.csv")
        assert info["checkpoint_rule"] == "best_test" and info["checkpoint_epoch"] == int(log.test_acc.idxmax()) + 1
        assert info["n_fit"] == info["n_train"] == 96 and log.val_acc.isna().all()
    curves = pd.read_parquet(out / "aggregate/curves.parquet")
    assert set(curves.solver) == {"paper"} and curves.epoch.between(1, 3).all()
    tables = {name: pd.read_csv(out / "paper/tables" / f"{name}.csv") for name in PAPER_TABLES}
    intervals = [f"{c} {end}" for c in ("32 none", "32 rrc_flip") for end in ("ci_low", "ci_high")]
    assert tables["id_accuracy"].columns.tolist() == [
        "id_dataset",
        "arch",
        "backbone",
        "32 none",
        *intervals[:2],
        "32 rrc_flip",
        *intervals[2:],
        "seeds",
    ]
    assert tables["id_accuracy"].backbone.tolist() == ["VGGm-11", "ViT-T"]
    cells = pd.read_parquet(out / "aggregate/cells.parquet").set_index("arch")
    assert not cells.trained.all()  # flagged, and kept below by analysis.include_untrained
    assert tables["id_accuracy"].set_index("backbone").loc["ViT-T", "32 none"] == pytest.approx(
        cells.loc["vit-t", "test_acc"], abs=1e-4
    )
    assert tables["ood_accuracy"].backbone.tolist() == ["VGGm-11", "VGGm-11", "ViT-T"]
    assert tables["level_means"].comparison.tolist() == ["augmentation (VGGm)"] * 2 + ["family"] * 2
    effects = tables["effect_sizes"]
    # pairs match on the seed: 2 seeds x 2 OOD sets for augmentation; the ViT has seed 0 only
    assert effects.comparison.tolist() == ["augmentation (VGGm)", "family"] and effects.pairs.tolist() == [4, 2]
    # two seeds of each VGGm backbone: seed means with finite t-intervals around them
    summary = pd.read_parquet(out / "aggregate/metrics_seeds.parquet")
    vgg = summary[summary.arch == "vggm11"]
    assert len(vgg) == 4 and vgg.n_seeds.eq(2).all() and summary[summary.arch == "vit-t"].n_seeds.eq(1).all()
    assert (vgg.ood_retained_ci_low <= vgg.ood_retained).all() and (vgg.ood_retained <= vgg.ood_retained_ci_high).all()
    per_seed = pd.read_parquet(out / "aggregate/metrics.parquet")
    expected_mean = per_seed[per_seed.arch == "vggm11"].groupby(["augmentation", "ood_set"]).ood_retained.mean()
    np.testing.assert_allclose(
        vgg.set_index(["augmentation", "ood_set"]).ood_retained.loc[expected_mean.index], expected_mean
    )
    retained = tables["ood_retained"]
    assert "mean ci_low" in retained.columns and retained.set_index("backbone").loc["VGGm-11", "seeds"].tolist() == [
        2,
        2,
    ]
    assert "\\begin{tabular}" in (out / "paper/tables/effect_sizes.tex").read_text()
    # the solvers side by side: the first drives the metrics; each is recomputed from its own probes
    from tunnelscope.metrics.tunnel import cell_metrics

    by_solver = pd.read_parquet(out / "aggregate/solver_metrics.parquet")
    assert by_solver.groupby("solver").size().to_dict() == {"paper": 10, "lbfgs": 10}  # 5 cells x 2 OOD sets
    metrics = pd.read_parquet(out / "aggregate/metrics.parquet")
    keys = ["arch", "augmentation", "seed", "ood_set"]
    paper_rows = by_solver[by_solver.solver == "paper"].merge(metrics, on=keys, suffixes=("", "_main"))
    np.testing.assert_allclose(paper_rows.ood_retained, paper_rows.ood_retained_main)
    cell = CELLS[0]
    lbfgs = pd.concat(
        [
            pd.read_parquet(out / "cells" / cell / "probes/lbfgs" / f"{e}.parquet")
            for e in ("toy", "toy-glyphs", "toy-novel")
        ]
    )
    assert set(lbfgs.solver) == {"lbfgs"} and lbfgs.l2.notna().all()
    info = json.loads((out / "cells" / cell / "cell.json").read_text())
    expected = cell_metrics(
        lbfgs,
        info,
        {
            "ood_sets": ["toy-glyphs", "toy-novel"],
            "id_start_thresholds": [0.95, 0.98],
            "alignment_layer": "last",
            "alignment_id": "probe",
            "tunnel_rule": "significant",
            "alpha": 0.05,
        },
        {
            e: pd.read_parquet(out / "cells" / cell / "probes/lbfgs" / f"{e}.predictions.parquet")
            for e in ("toy-glyphs", "toy-novel")
        },
    )
    mine = by_solver[
        (by_solver.solver == "lbfgs")
        & (by_solver.augmentation == "none")
        & (by_solver.arch == "vggm11")
        & (by_solver.seed == 0)
    ].set_index("ood_set")
    for row in expected.itertuples():
        assert mine.loc[row.ood_set, "tunnel_start"] == row.tunnel_start and mine.loc[
            row.ood_set, "pearson"
        ] == pytest.approx(row.pearson, nan_ok=True)
    comparison = pd.read_csv(out / "paper/tables/solvers.csv")
    assert (
        set(comparison.reference) == {"paper"} and set(comparison.solver) == {"lbfgs"} and comparison.pairs.max() == 10
    )
    assert set(comparison.metric) >= {"ood_retained", "pearson", "alignment", "tunnel_start"}
    retained = comparison.set_index("metric").loc["ood_retained"]
    joined = by_solver[by_solver.solver == "paper"].merge(
        by_solver[by_solver.solver == "lbfgs"], on=keys, suffixes=("_p", "_l")
    )
    assert retained.mean_difference == pytest.approx((joined.ood_retained_l - joined.ood_retained_p).mean(), abs=1e-3)
    with Image.open(out / "paper/solvers.png") as img:
        assert img.size[0] > 600
