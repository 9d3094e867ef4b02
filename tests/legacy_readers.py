"""The hand-written readers that torchvision's dataset classes replaced in data/sources.py (as of
commit f44483e), kept as the reference that tests/test_datasets.py checks the torchvision-backed
readers against (the same images and labels) and benchmarks/bench_readers.py times them against."""

import pickle
from pathlib import Path

import numpy as np

from tunnelscope.data.sources import FLOWERS_SPLITS, RawSplit, _need_dir, _need_file
from tunnelscope.data.splits import SPLITS
from tunnelscope.data.store import DatasetError


def _unpickle(path: Path) -> dict:
    # CIFAR's official format is a Python pickle; read only files the user pointed us at.
    try:
        with open(_need_file(path), "rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable CIFAR batch ({exc})") from exc


def _cifar(root: Path, hundred: bool) -> dict[str, RawSplit]:
    if hundred:
        base = _need_dir(root / "cifar-100-python")
        files, key = {"train": ["train"], "test": ["test"]}, "fine_labels"
    else:
        base = _need_dir(root / "cifar-10-batches-py")
        files, key = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}, "labels"
    out = {}
    for split, names in files.items():
        batches = [_unpickle(base / n) for n in names]
        data = np.concatenate([np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
        labels = np.concatenate([np.asarray(b[key], dtype=np.int64) for b in batches])
        out[split] = RawSplit(list(data.transpose(0, 2, 3, 1)), labels, _cifar_names(base, hundred))
    return out


def _cifar_names(base: Path, hundred: bool) -> list[str] | None:
    """CIFAR's class names from its meta file (None where it is missing)."""
    path = base / ("meta" if hundred else "batches.meta")
    if not path.is_file():
        return None
    return [str(n) for n in _unpickle(path)["fine_label_names" if hundred else "label_names"]]


def _stl10(root: Path) -> dict[str, RawSplit]:
    base = _need_dir(root / "stl10_binary")
    out = {}
    for split in SPLITS:
        raw = np.fromfile(_need_file(base / f"{split}_X.bin"), dtype=np.uint8)
        labels = np.fromfile(_need_file(base / f"{split}_y.bin"), dtype=np.uint8).astype(np.int64) - 1
        if raw.size != len(labels) * 3 * 96 * 96:
            raise DatasetError(f"{base / f'{split}_X.bin'}: size does not match {len(labels)} labels of 3x96x96 images")
        # Stored column-major per channel: (N, C, W, H).
        images = raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
        out[split] = RawSplit(list(images), labels)
    return out


def _flowers(root: Path, splits: str) -> dict[str, RawSplit]:
    from scipy.io import loadmat

    base = _need_dir(root / "flowers-102")
    labels = loadmat(_need_file(base / "imagelabels.mat"))["labels"].ravel().astype(np.int64) - 1
    sets = loadmat(_need_file(base / "setid.mat"))
    out = {}
    for split, keys in FLOWERS_SPLITS[splits].items():
        ids = np.sort(np.concatenate([sets[key].ravel() for key in keys]))
        out[split] = RawSplit([base / "jpg" / f"image_{i:05d}.jpg" for i in ids], labels[ids - 1])
    return out


def _aircraft(root: Path) -> dict[str, RawSplit]:
    base = _need_dir(root / "fgvc-aircraft-2013b" / "data")
    classes = [line.strip() for line in _need_file(base / "variants.txt").read_text().splitlines() if line.strip()]
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, name in (("train", "trainval"), ("test", "test")):
        listing = _need_file(base / f"images_variant_{name}.txt")
        items, labels = [], []
        for line in listing.read_text().splitlines():
            if not line.strip():
                continue
            image_id, variant = line.strip().split(" ", 1)
            if variant not in index:
                raise DatasetError(f"{listing}: variant {variant!r} is not in variants.txt")
            items.append(base / "images" / f"{image_id}.jpg")
            labels.append(index[variant])
        out[split] = RawSplit(items, np.array(labels, dtype=np.int64), classes)
    return out


def _pets(root: Path) -> dict[str, RawSplit]:
    base = _need_dir(root / "oxford-iiit-pet")
    out = {}
    for split, name in (("train", "trainval"), ("test", "test")):
        rows = [
            line.split()
            for line in _need_file(base / "annotations" / f"{name}.txt").read_text().splitlines()
            if line.strip()
        ]
        items = [base / "images" / f"{r[0]}.jpg" for r in rows]
        out[split] = RawSplit(items, np.array([int(r[1]) - 1 for r in rows], dtype=np.int64))
    return out


READERS = {
    "cifar10": lambda spec, root: _cifar(root, hundred=False),
    "cifar100": lambda spec, root: _cifar(root, hundred=True),
    "stl10": lambda spec, root: _stl10(root),
    "flowers102": lambda spec, root: _flowers(root, spec.get("splits", "official")),
    "fgvc_aircraft": lambda spec, root: _aircraft(root),
    "oxford_pets": lambda spec, root: _pets(root),
}
