"""config/paper.yaml is the paper's grid (Table 11) with the paper's recipes (App. A.3-A.5)."""

import pytest
import yaml

from conftest import REPO
from tunnelscope.study.config import Study

IN100 = "imagenet100"
SUBSETS = ["in100-10x1000", "in100-50x200", "in100-100x100", "in100-100x200", "in100-100x500", "in100-100x700"]
NO, AUG = "none", "rrc_flip"


def table_11():
    """The 64 backbones of Table 11 with their recipe: (lr, weight decay, batch, epochs)."""
    rows = {}

    def add(arch, datasets, resolutions, lr, batch, epochs_no_aug, epochs_aug, wd=0.05):
        for dataset in datasets:
            for res in resolutions:
                rows[(arch, dataset, res, NO)] = (lr, wd, batch, epochs_no_aug)
                rows[(arch, dataset, res, AUG)] = (lr, wd, batch, epochs_aug)

    # ImageNet-100 (40): VGGm lr 6e-3, ResNet lr 1e-2 (ResNet-18 80 epochs with aug), ViT 8e-4 at batch 96.
    add("vggm17", [IN100], [32, 64, 128, 224], 6e-3, 512, 100, 100)
    add("resnet18", [IN100], [32, 64, 128, 224], 1e-2, 512, 100, 80)
    add("vit-t-plus", [IN100], [32, 64, 128, 224], 8e-4, 96, 100, 60)
    add("vggm11", [IN100], [32, 224], 6e-3, 512, 100, 100)
    add("resnet34", [IN100], [32, 224], 1e-2, 512, 100, 100)
    add("vit-t", [IN100], [32, 224], 8e-4, 96, 100, 40)
    add("vggm11-dagger", [IN100], [32], 6e-3, 512, 100, 100)
    add("vggm17-dagger", [IN100], [32], 6e-3, 512, 100, 100)
    # CIFAR-100 (8) and CIFAR-10 (4) at 32: lr 1e-2; VGGm-11 trains 70 epochs with augmentation.
    add("vggm11", ["cifar100", "cifar10"], [32], 1e-2, 512, 100, 70)
    add("vggm17", ["cifar100", "cifar10"], [32], 1e-2, 512, 100, 100)
    add("vggm11-dagger", ["cifar100"], [32], 1e-2, 512, 100, 70)
    add("vggm17-dagger", ["cifar100"], [32], 1e-2, 512, 100, 100)
    # The six ImageNet-100 subsets (12): VGGm-11 at 32, lr 8e-3, wd 5e-2, 100 epochs.
    add("vggm11", SUBSETS, [32], 8e-3, 512, 100, 100)
    return rows


@pytest.fixture(scope="module")
def paper(schema):
    return Study(yaml.safe_load((REPO / "config/paper.yaml").read_text()), schema)


def test_paper_preset_is_exactly_the_64_backbones_of_table_11(paper):
    expected = table_11()
    assert len(expected) == 64
    got = {(c.arch, c.id_dataset, c.resolution, c.augmentation) for c in paper.cells.values()}
    assert got == set(expected)
    assert {c.seed for c in paper.cells.values()} == {0}


def test_each_backbone_has_its_recipe_and_checkpoint_rule(paper):
    for cell in paper.cells.values():
        lr, wd, batch, epochs = table_11()[(cell.arch, cell.id_dataset, cell.resolution, cell.augmentation)]
        t = cell.training
        assert (t["lr"], t["weight_decay"], t["batch_size"], t["epochs"]) == (lr, wd, batch, epochs), cell.id
        assert t["warmup_epochs"] == 5 and t["label_smoothing"] == 0.1, cell.id
        assert t["checkpoint"] == "best_test" and t["val_fraction"] == 0, cell.id  # best test epoch, no hold-out
        assert t["schedule_step"] == "epoch" and t["lr_scaling_batch"] is None, cell.id
        if cell.arch.startswith("vit"):
            assert t["warmup_start_factor"] * t["lr"] == pytest.approx(1e-6) and t["min_lr"] == 1e-5
            assert t["repeated_augmentation"] == (3 if cell.augmentation == AUG else 1)
            assert t["drop_path"] == 0.1 and cell.model["preprocessing"] == "imagenet"
            assert (
                cell.probe["paper"]["batch_size"] == 512
                and cell.probe["paper"]["reshuffle"]
                and cell.probe["paper"]["repeats"] == 3
            )
            assert cell.probe["seed"] == 0
        else:
            assert t["warmup_start_factor"] == 0.01 and t["min_lr"] == 0 and t["repeated_augmentation"] == 1
            assert cell.model["preprocessing"] == "dataset" and cell.probe["paper"]["batch_size"] == 128
            assert cell.probe["paper"]["reshuffle"] is False and cell.probe["paper"]["repeats"] == 1
            assert cell.probe["seed"] == (42 if cell.arch.startswith("vggm") else 0)  # the released scripts' seeds


def test_ood_suites_probe_protocol_and_preprocessing(paper):
    suite = ["ninco", "imagenet-r", "cub200", "aircraft", "flowers102", "cifar100", "pets", "stl10"]
    for cell in paper.cells.values():
        other_cifar = ["cifar10" if d == "cifar100" else d for d in suite] if cell.id_dataset == "cifar100" else suite
        assert paper.ood_sets(cell.id) == other_cifar, cell.id
        assert (
            cell.probe["solver"] == "paper"
            and cell.probe["paper"]["report"] == "best_test"
            and cell.probe["paper"]["epochs"] == 30
        )
    cnn = "vggm11_cifar100_r32_none_s0"
    assert paper.transform_tag(cnn, "cifar100") == "r32-native" and paper.normalization(cnn, "cifar100")["mean"] == [
        0.5071,
        0.4865,
        0.4409,
    ]
    vit = "vit-t_imagenet100_r32_none_s0"
    assert paper.transform_tag(vit, "cifar100") == "r32" and paper.normalization(vit, "cifar100")["mean"] == [
        0.485,
        0.456,
        0.406,
    ]
    assert paper.transform_tag("vggm11_imagenet100_r224_none_s0", "cifar100") == "r224"  # kept as it is at 32 only
    subsets = {name: paper.config["datasets"][name] for name in SUBSETS}
    assert all(spec["class_order"] == "sorted" for spec in subsets.values())
    assert [(s.get("first_classes", 100), s["per_class"]) for s in subsets.values()] == [
        (10, 1000),
        (50, 200),
        (100, 100),
        (100, 200),
        (100, 500),
        (100, 700),
    ]
    assert paper.config["datasets"]["flowers102"]["splits"] == "release"


def test_pretrained_preset_is_the_papers_published_backbone_study(schema):
    study = Study(yaml.safe_load((REPO / "config/pretrained.yaml").read_text()), schema)
    archs = {name: spec["arch"] for name, spec in study.config["pretrained"].items()}
    assert archs == {
        "resnet50-sup": "torchvision/resnet50",
        "resnet50-swav": "torchvision/resnet50",
        "vit-b16-sup": "torchvision/vit_b_16",
        "vit-b16-dino": "timm/vit_base_patch16_224.dino",
        "vit-b16-mae": "timm/vit_base_patch16_224.mae",
        "vit-b16-mugs": "timm/vit_base_patch16_224",
        "convnext-b-sup": "timm/convnext_base.fb_in1k",
        "convnextv2-b-fcmae": "timm/convnextv2_base.fcmae",
    }
    assert "11ad3fa6" in study.config["pretrained"]["resnet50-sup"]["weights"]  # torchvision's IMAGENET1K_V2 file
    lr = {c.arch: c.probe["paper"]["lr"] for c in study.cells.values()}
    assert lr == {
        "resnet50-swav": 3e-5,
        "convnext-b-sup": 3e-5,
        "convnextv2-b-fcmae": 3e-5,
        "vit-b16-dino": 5e-4,
        "vit-b16-mae": 5e-4,
        "vit-b16-mugs": 5e-4,
        "vit-b16-sup": 5e-4,
        "resnet50-sup": 5e-4,
    }
    for cell in study.cells.values():
        assert (
            cell.probe["solver"] == "paper"
            and cell.probe["paper"]["batch_size"] == 512
            and cell.probe["paper"]["weight_decay"] == 0
        )
        assert cell.probe["paper"]["report"] == "best_test" and len(study.eval_sets(cell.id)) == 9
    assert study.config["datasets"]["imagenet"] == {
        **study.config["datasets"]["imagenet"],
        "source": "imagenet",
        "per_class": 50,
    }
