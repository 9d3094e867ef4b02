"""config/claims.yaml: each claim gets the backbone pairs its header states, and no OOD probe
trains on images a cell's backbone trained on."""

import numpy as np
import pandas as pd
import yaml
from fakedata import fake_roots

from conftest import REPO, tunnelscope_cli
from tunnelscope.analysis.comparisons import comparisons, select
from tunnelscope.preflight import shared_training_images, training_overlap_warnings
from tunnelscope.registry import arch_facts
from tunnelscope.study.config import Study

WHOLE = REPO / "config/claims.yaml"
# claim -> backbone pairs, as the header of config/claims.yaml and docs/evidence.md state them
BACKBONE_PAIRS = {"augmentation": 12, "ID classes": 6, "spatial reduction": 6, "depth": 6, "resolution": 6}
# ID classes of the claims' ID sets (CIFAR-10 and Caltech-101 without its background class)
ID_CLASSES = {
    "cifar10": 10,
    "cifar10-5c": 5,
    "cifar10-2c": 2,
    "caltech101": 101,
    "caltech101-first50": 50,
    "caltech101-last51": 51,
}


def study(path, schema) -> Study:
    return Study(yaml.safe_load(path.read_text()), schema)


def planted_table(whole: Study) -> pd.DataFrame:
    """One row per (cell, OOD set) of ``whole`` with its variables and random targets: what the
    analysis reads, less the metrics."""
    rng = np.random.default_rng(0)
    rows = []
    for cid, cell in whole.cells.items():
        facts = arch_facts(cell.arch)
        for ood_set in whole.ood_sets(cid):
            rows.append(
                {
                    **cell.variables,
                    "ood_set": ood_set,
                    "id_classes": ID_CLASSES[cell.id_dataset],
                    **{k: facts[k] for k in ("family", "stem", "spatial_reduction", "depth")},
                    "gamma": 1.0,
                    "ood_retained": rng.uniform(0, 100),
                    "pearson": rng.uniform(-1, 1),
                    "alignment": rng.uniform(0, 1),
                }
            )
    return pd.DataFrame(rows)


def test_each_claim_has_the_backbone_pairs_its_header_states(schema):
    config = yaml.safe_load(WHOLE.read_text())
    whole = Study(config, schema)
    assert len(whole.cells) == 32
    for name, spec in config["datasets"].items():  # the class counts planted below
        if name in ID_CLASSES and ("first_classes" in spec or "classes" in spec):
            assert ID_CLASSES[name] == spec.get("first_classes", len(spec.get("classes", ())))
    table = planted_table(whole)
    tests, _ = comparisons(table, config["analysis"]["comparisons"], n_resamples=200)
    counts = tests[tests.target == "ood_retained"].set_index("comparison").n_backbone_pairs.to_dict()
    assert counts == BACKBONE_PAIRS
    # no claim rests on the near-ID noisy copy of CIFAR-10 test images
    assert "cifar10-noise" in set(table.ood_set)
    for spec in config["analysis"]["comparisons"]:
        assert "cifar10-noise" not in set(select(table, spec["where"]).ood_set), spec["name"]
    header = WHOLE.read_text().split("\nresults:")[0]
    for claim, n in BACKBONE_PAIRS.items():
        assert any(claim in line and f" {n} " in line for line in header.splitlines()), claim


def on_fake_trees(config: dict, base) -> dict:
    """``config`` with its roots on fake trees under ``base`` and per_class cut to 2, which they
    hold (the same seeded draws decide an overlap either way)."""
    datasets = {n: {**s, "per_class": 2} if "per_class" in s else s for n, s in config["datasets"].items()}
    return {**config, "datasets": fake_roots(datasets, base)}


def test_no_ood_probe_trains_on_a_cells_training_images(schema, tmp_path):
    s = Study(on_fake_trees(yaml.safe_load(WHOLE.read_text()), tmp_path), schema)
    for cid in s.cells:
        for ood_set in s.ood_sets(cid):
            assert not shared_training_images(s, cid, ood_set), f"{ood_set} holds training images of {cid}"
    assert training_overlap_warnings(s) == []


OLD_DESIGN = {
    "datasets": {
        "cifar10": {"source": "imagefolder", "root": "data/cifar10", "per_class": 500},
        "cifar10-2c": {"source": "imagefolder", "root": "data/cifar10", "first_classes": 2, "per_class": 500},
        "cifar10-noise": {"source": "corrupted", "of": "cifar10", "corruption": "gaussian_noise", "severity": 3},
    },
    "grid": {"arch": ["vggm11"], "id_dataset": ["cifar10", "cifar10-2c"], "resolution": [32]},
    "ood_sets": ["cifar10-noise"],
}


def test_a_noisy_copy_of_the_id_set_trains_on_its_images_and_validate_warns(schema, tmp_path):
    """The check above can fail: the preset before issue 29 probed a noisy copy of the ID set
    itself, whose train split is the backbone's training images (and a class subset drawn from
    the same files shares some); `tunnelscope validate` names each such pair in one line."""
    config = on_fake_trees({"results": str(tmp_path / "results"), **OLD_DESIGN}, tmp_path)
    s = Study(config, schema)
    assert len(shared_training_images(s, "vggm11_cifar10_r32_none_s0", "cifar10-noise")) == 2 * 4  # all of it
    assert shared_training_images(s, "vggm11_cifar10-2c_r32_none_s0", "cifar10-noise")
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    validate = tunnelscope_cli(tmp_path, "validate", "study.yaml", "--no-budget")
    assert validate.returncode == 0, validate.stderr[-2000:]
    warned = [line for line in validate.stdout.splitlines() if line.startswith("warning: ood_sets: 'cifar10-noise'")]
    assert len(warned) == 2 and all("a near-ID set, not OOD" in line for line in warned), validate.stdout
    for name in ("cifar10", "cifar10-2c"):
        assert any(f"backbones on {name!r} trained on" in line for line in warned), name
