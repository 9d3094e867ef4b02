"""The paper's released results table (Harun et al. 2024, ``experiments_results.csv``, MIT).

It has 512 rows (64 backbones x 8 OOD sets) and no identifiers: the backbone and the OOD set of
a row follow from its position. Its blocks of 8 rows come in the order of ``RELEASE_BLOCKS``, and
within a block the OOD sets in the order of ``RELEASE_OOD_SETS`` (found by matching the blocks'
values to the paper's Tables 4-7 and 12). ``from_release`` renames its columns to tunnelscope's
and adds those identities, named as in ``config/paper.yaml``, so the paper's comparisons run on
it unchanged; its numbers are checked against the paper's coding of every block on the way.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd

from tunnelscope.registry import ARCHS

RELEASE_COLUMNS = {
    "Pearson Correlation": "pearson",
    "ID OOD Alignment": "alignment",
    "Percentage OOD retained": "ood_retained",
    "Stem": "stem",
    "Spatial Reduction": "spatial_reduction",
    "CNN vs ViT": "family",
    "Augmentations": "augmentation",
    "Resolution": "resolution",
    "ID Class Count": "id_classes",
    "OverParam. Level": "gamma",
    "Depth": "depth",
}
FAMILIES = {"CNN": "cnn", "Transformer": "vit"}
AUGMENTATIONS = {0: "none", 2: "rrc_flip"}  # the table counts the augmentations (RRC + flip)

# The OOD sets of a block; the CIFAR slot holds CIFAR-10 for CIFAR-100 backbones.
RELEASE_OOD_SETS = ("ninco", "imagenet-r", "cub200", "aircraft", "flowers102", "cifar100", "pets", "stl10")
SUBSETS = ("in100-100x100", "in100-100x200", "in100-100x500", "in100-100x700", "in100-10x1000", "in100-50x200")
# (classes, training images) of each ID set, as the table codes them in ID Class Count and gamma.
ID_SETS = {"imagenet100": (100, 126_689), "cifar10": (10, 50_000), "cifar100": (100, 50_000)}
ID_SETS |= {s: (int(k), int(k) * int(n)) for s in SUBSETS for k, n in [s.removeprefix("in100-").split("x")]}


def _release_blocks() -> list[tuple[str, str, int, str]]:
    blocks = []
    # 0-23: ImageNet-100 at 32 and 224; per model no aug (32, 224), then aug (32, 224).
    for arch in ("vggm11", "vggm17", "resnet18", "resnet34", "vit-t", "vit-t-plus"):
        blocks += [(arch, "imagenet100", res, aug) for aug in ("none", "rrc_flip") for res in (32, 224)]
    # 24-27: VGGm-dagger on ImageNet-100; 28-35: CIFAR-100; 36-39: CIFAR-10.
    blocks += [
        (arch, "imagenet100", 32, aug) for arch in ("vggm11-dagger", "vggm17-dagger") for aug in ("none", "rrc_flip")
    ]
    blocks += [
        (arch, "cifar100", 32, aug)
        for arch in ("vggm11", "vggm17", "vggm11-dagger", "vggm17-dagger")
        for aug in ("none", "rrc_flip")
    ]
    blocks += [(arch, "cifar10", 32, aug) for arch in ("vggm11", "vggm17") for aug in ("none", "rrc_flip")]
    # 40-51: the 64 and 128 runs; 52-63: the ImageNet-100 subsets with VGGm-11 at 32.
    blocks += [
        (arch, "imagenet100", res, aug)
        for arch in ("vggm17", "vit-t-plus", "resnet18")
        for res in (64, 128)
        for aug in ("none", "rrc_flip")
    ]
    blocks += [("vggm11", subset, 32, aug) for subset in SUBSETS for aug in ("none", "rrc_flip")]
    return blocks


RELEASE_BLOCKS = _release_blocks()


PAPER_ANALYSIS = "resources/paper-analysis.yaml"


def release_path():
    """The copy of the released table shipped with tunnelscope (its MIT notice beside it)."""
    return resources.files("tunnelscope").joinpath("resources/paper-results/experiments_results.csv")


def paper_analysis() -> dict:
    """config/paper.yaml's ``analysis`` section (the paper's comparisons, unit and slope
    normalisation), shipped as resources/paper-analysis.yaml so that ``analyze --paper`` works from
    an installed package; validated and with its defaults filled as in a study. A test keeps the
    copy equal to config/paper.yaml's."""
    import yaml

    from tunnelscope.study.schema import load_schema, section_settings

    text = resources.files("tunnelscope").joinpath(PAPER_ANALYSIS).read_text()
    return section_settings(load_schema(), "analysis", yaml.safe_load(text)["analysis"])


def is_release_table(table: pd.DataFrame) -> bool:
    return list(table.columns) == list(RELEASE_COLUMNS)


def ood_sets_of(id_dataset: str) -> list[str]:
    """The OOD sets of a backbone, in the released order (the other CIFAR for CIFAR backbones)."""
    return [("cifar10" if id_dataset == "cifar100" and name == "cifar100" else name) for name in RELEASE_OOD_SETS]


def from_release(table: pd.DataFrame) -> pd.DataFrame:
    """The released table with tunnelscope's column names and values, plus the identity of each
    row (arch, label, arch_family, id_dataset, seed 0, ood_set, ood_index) from its position.
    Raises ValueError, naming the row, where a block's coding does not fit its identity."""
    if len(table) != 8 * len(RELEASE_BLOCKS):
        raise ValueError(
            f"the released table has {8 * len(RELEASE_BLOCKS)} rows (64 backbones x 8 OOD sets), this one {len(table)}"
        )
    out = table.rename(columns=RELEASE_COLUMNS).copy()
    out["family"] = out.family.map(FAMILIES)
    out["augmentation"] = out.augmentation.map(AUGMENTATIONS)
    identity = []
    for arch, id_dataset, resolution, augmentation in RELEASE_BLOCKS:
        facts = ARCHS[arch]
        for index, ood_set in enumerate(ood_sets_of(id_dataset), start=1):
            identity.append(
                {
                    "arch": arch,
                    "label": facts["label"],
                    "arch_family": facts["arch_family"],
                    "id_dataset": id_dataset,
                    "seed": 0,
                    "ood_set": ood_set,
                    "ood_index": index,
                    "_expect": (
                        facts["stem"],
                        facts["family"],
                        facts["depth"],
                        resolution,
                        augmentation,
                        ID_SETS[id_dataset][0],
                        facts["spatial_reduction"],
                        facts["params_m"] * 1e6 / ID_SETS[id_dataset][1],
                    ),
                }
            )
    ids = pd.DataFrame(identity, index=out.index)
    coded = out[
        ["stem", "family", "depth", "resolution", "augmentation", "id_classes", "spatial_reduction", "gamma"]
    ].itertuples(index=False)
    for row, (expect, got) in enumerate(zip(ids.pop("_expect"), coded)):
        fits = expect[:6] == tuple(got[:6]) and np.allclose(expect[6:], tuple(got[6:]), rtol=1e-3)
        if not fits:
            raise ValueError(
                f"row {row + 2} of the released table (block {row // 8}) reads {tuple(got)}, but that block is {RELEASE_BLOCKS[row // 8]}, coded {expect}: rows out of the published order?"
            )
    front = ["arch", "label", "arch_family", "id_dataset", "resolution", "augmentation", "seed", "ood_set", "ood_index"]
    out = pd.concat([ids, out], axis=1)
    return out[front + [c for c in out.columns if c not in front]]
