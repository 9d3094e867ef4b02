"""Dataset roots in each file source's official on-disk layout, with few and empty image files:
enough for tunnelscope.data.sources.load_source to list, split and subset them (it decodes no
image). Shared by the tests that build every preset's jobs on such trees."""

from __future__ import annotations

import pickle
from importlib import resources
from pathlib import Path

import numpy as np

PER_CLASS = 6  # images per class and split: a 0.2 test fraction holds one out


def fake_roots(datasets: dict, base: Path) -> dict:
    """``datasets`` with every root moved under ``base`` and a tree written there that holds what
    each spec reads (its classes, first_classes); specs sharing a root share its tree."""
    moved = {}
    for name, spec in datasets.items():
        if "root" in spec:
            spec = {**spec, "root": str(base / spec["root"].lstrip("/"))}
            _write(spec, Path(spec["root"]))
        moved[name] = spec
    return moved


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def _class_names(spec: dict, default: int = 4) -> list[str]:
    listed = spec.get("classes")
    count = max(default, spec.get("first_classes", 0))
    return [*(listed or []), *(f"class{i:03d}" for i in range(count))]


def _folders(tree: Path, classes: list[str]) -> None:
    for cls in classes:
        for i in range(PER_CLASS):
            _touch(tree / cls / f"{i}.jpg")


def _write(spec: dict, root: Path) -> None:
    source = spec["source"]
    if source in ("imagefolder", "imagenet", "imagenet100"):
        classes = _class_names(spec)
        if source == "imagenet100":
            classes = resources.files("tunnelscope").joinpath("resources/imagenet100.txt").read_text().split()
        if spec.get("layout") == "single":
            _folders(root, classes)
        else:
            for split in ("train", "test" if source == "imagefolder" else "val"):
                _folders(root / split, classes)
    elif source in ("ninco", "imagenet_r"):
        _folders(root / ("NINCO_OOD_classes" if source == "ninco" else "imagenet-r"), _class_names(spec))
    elif source in ("cifar10", "cifar100"):
        _cifar(root, 100 if source == "cifar100" else 10)
    else:
        WRITERS[source](root)


def _cifar(root: Path, classes: int) -> None:
    hundred = classes == 100
    base = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    base.mkdir(parents=True, exist_ok=True)
    n = classes * PER_CLASS
    names = ["train", "test"] if hundred else [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for name in names:
        labels = [i % classes for i in range(n)]
        with open(base / name, "wb") as fh:
            pickle.dump({"data": np.zeros((n, 3072), np.uint8), "fine_labels" if hundred else "labels": labels}, fh)
    # the class names, read from the meta file as torchvision's CIFAR reader does
    with open(base / ("meta" if hundred else "batches.meta"), "wb") as fh:
        pickle.dump({"fine_label_names" if hundred else "label_names": [f"class{i}" for i in range(classes)]}, fh)


def _stl10(root: Path) -> None:
    base = root / "stl10_binary"
    base.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        np.zeros((10, 3, 96, 96), np.uint8).tofile(base / f"{split}_X.bin")
        np.arange(1, 11, dtype=np.uint8).tofile(base / f"{split}_y.bin")


def _cub(root: Path) -> None:
    base = root / "CUB_200_2011"
    rows = [(i, f"{1 + i % 4:03d}.Bird/{i}.jpg", 1 + i % 4, int(i < 12)) for i in range(1, 17)]
    for _, rel, _, _ in rows:
        _touch(base / "images" / rel)
    for name, column in (("images.txt", 1), ("image_class_labels.txt", 2), ("train_test_split.txt", 3)):
        (base / name).write_text("\n".join(f"{r[0]} {r[column]}" for r in rows))


def _flowers(root: Path) -> None:
    from scipy.io import savemat

    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True, exist_ok=True)  # torchvision's reader checks that it exists
    savemat(base / "imagelabels.mat", {"labels": np.array([[1, 2, 1, 2, 1, 2, 1, 2, 1]])})
    savemat(base / "setid.mat", {"trnid": np.array([[1, 2]]), "valid": np.array([[3, 4]]), "tstid": np.array([[5, 6]])})


def _aircraft(root: Path) -> None:
    base = root / "fgvc-aircraft-2013b" / "data"
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "variants.txt").write_text("707-320\nA300B4\n")
    (base / "images_variant_trainval.txt").write_text("1000 707-320\n1001 A300B4\n")
    (base / "images_variant_test.txt").write_text("1002 707-320\n1003 A300B4\n")


def _pets(root: Path) -> None:
    base = root / "oxford-iiit-pet" / "annotations"
    base.mkdir(parents=True, exist_ok=True)
    (base.parent / "images").mkdir(exist_ok=True)  # torchvision's reader checks that both exist
    (base / "trainval.txt").write_text("Abyssinian_1 1 1 1\nbeagle_1 2 2 1\n")
    (base / "test.txt").write_text("Abyssinian_2 1 1 1\nbeagle_2 2 2 1\n")


WRITERS = {"stl10": _stl10, "cub200": _cub, "flowers102": _flowers, "fgvc_aircraft": _aircraft, "oxford_pets": _pets}
