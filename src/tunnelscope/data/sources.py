"""Dataset sources and the prepared-image store they are written into.

``prepare`` turns a dataset spec (a ``datasets:`` entry of the config) into a store (``data/store.py``)
per (dataset, transform tag: resolution, interpolation, crop_pct, native; ``registry.transform_tag``
names it, ``RESULTS/prepared/DATASET/TAG``): every image kept whole at the eval transform's
resize, train and test splits, written chunk by chunk. Training and extraction read that store instead of decoding and
resizing the same images again every epoch.

The readers below return each split's images (arrays, or file paths, so decoding runs threaded
while the store is written) and labels. CIFAR, STL-10, Flowers-102, FGVC-Aircraft and
Oxford-IIIT Pets are read by torchvision's dataset classes (their official on-disk layout, the
one torchvision's downloader produces), with their MD5 check of each file cut to a presence check
(``_official``) and their images taken from the lists they build, not decoded one per
``__getitem__``. CUB-200 (no torchvision reader) and the folder trees (with class lists, subsets
and per-class probe sets of their own) are read by the readers here.
"""

from __future__ import annotations

import logging
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tunnelscope.data import synthetic
from tunnelscope.data.splits import SPLITS, stratified_split
from tunnelscope.data.store import (
    CHUNK_BYTES,
    DatasetError,
    ImageStore,
    SplitPlan,
    byte_chunks,
    parallel_fill,
    stored_size,
    write_store,
)
from tunnelscope.registry import DEFAULT_TRANSFORM
from tunnelscope.study.config import dataset_defaults

log = logging.getLogger("tunnelscope.datasets")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}


@dataclass
class RawSplit:
    """Images before the transform: file paths or HxWxC uint8 arrays, with labels, and the
    classes' names in label order where the source has them (folder names, CIFAR's, ...)."""

    items: list
    labels: np.ndarray
    classes: list[str] | None = None


# ---------------------------------------------------------------- sources


def _need_dir(path: Path) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: dataset directory not found")
    return path


def _need_file(path: Path) -> Path:
    if not path.is_file():
        raise DatasetError(f"{path}: dataset file not found")
    return path


def _class_folders(root: Path, classes: list[str] | None) -> list[str]:
    found = sorted(p.name for p in _need_dir(root).iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        if not found:
            raise DatasetError(f"{root}: no class folders")
        return found
    missing = [c for c in classes if c not in found]
    if missing:
        raise DatasetError(
            f"{root}: class list does not match the tree; missing folders: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    return list(classes)


def _folder_split(root: Path, classes: list[str]) -> RawSplit:
    items, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{root / cls}: empty class folder (no image files)")
        items += files
        labels += [label] * len(files)
    return RawSplit(items, np.array(labels, dtype=np.int64), list(classes))


def _stratified(raw: RawSplit, test_fraction: float, seed: int) -> dict[str, RawSplit]:
    """A dataset without an official split: seeded, stratified train/test."""
    held = np.zeros(len(raw.labels), dtype=bool)
    held[stratified_split(raw.labels, test_fraction, seed, stream=4001)[1]] = True
    return {"train": _select(raw, ~held), "test": _select(raw, held)}


def _class_list(spec: dict, default: list[str] | None = None) -> list[str] | None:
    """The spec's class list (``classes``, ``class_list``, else ``default``) in label order:
    as listed, or sorted by name with ``class_order: sorted``."""
    classes = default
    if "classes" in spec and isinstance(spec["classes"], list):
        classes = [str(c) for c in spec["classes"]]
    elif "class_list" in spec:
        path = Path(spec["class_list"])
        classes = [line.strip() for line in _need_file(path).read_text().splitlines() if line.strip()]
    if classes is not None and spec.get("class_order") == "sorted":
        classes = sorted(classes)
    return classes


def _imagefolder(
    spec: dict, root: Path, default_classes: list[str] | None = None, test_dir: str = "test"
) -> dict[str, RawSplit]:
    classes = _class_list(spec, default_classes)
    if spec["layout"] == "single":
        classes = _class_folders(root, classes)
        return _stratified(_folder_split(root, classes), spec["test_fraction"], spec["seed"])
    train_root, test_root = _need_dir(root / "train"), _need_dir(root / test_dir)
    classes = _class_folders(train_root, classes)
    test_classes = _class_folders(test_root, None)
    if missing := sorted(set(classes) - set(test_classes)):
        raise DatasetError(f"{test_root}: no folders for classes {', '.join(missing[:5])}")
    return {"train": _folder_split(train_root, classes), "test": _folder_split(test_root, classes)}


def _single_tree(spec: dict, root: Path, subdir: str) -> dict[str, RawSplit]:
    """NINCO / ImageNet-R: one tree of class folders, split per class with a seeded 80/20."""
    tree = root / subdir if (root / subdir).is_dir() else root
    classes = _class_folders(tree, _class_list(spec))
    return _stratified(_folder_split(tree, classes), spec["test_fraction"], spec["seed"])


def _official(cls, root: Path, files: dict, **kwargs):
    """torchvision's reader ``cls`` of a dataset's official on-disk layout, its files' MD5 check
    cut to a presence check: torchvision checks each file against the official archive's MD5,
    which guards its downloads but refuses any trimmed or re-packed copy (and the tests' small
    files); the store records digests of its own. ``files``: the class attributes listing
    (file name, md5) pairs, given with md5 None."""
    reader = type(cls.__name__, (cls,), files)
    try:
        return reader(str(root), download=False, **kwargs)
    except (RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as exc:
        raise DatasetError(f"{root}: not a readable {cls.__name__} layout ({type(exc).__name__}: {exc})") from exc


def _unverified(pairs) -> list[list]:
    return [[name, None] for name, _ in pairs]


def _cifar(root: Path, hundred: bool) -> dict[str, RawSplit]:
    import torchvision.datasets as tvd

    cls = tvd.CIFAR100 if hundred else tvd.CIFAR10
    base = _need_dir(root / cls.base_folder)
    for name, _ in cls.train_list + cls.test_list + [(cls.meta["filename"], None)]:
        _need_file(base / name)
    files = {
        "train_list": _unverified(cls.train_list),
        "test_list": _unverified(cls.test_list),
        "meta": {**cls.meta, "md5": None},
    }
    out = {}
    for split in SPLITS:
        data = _official(cls, root, files, train=split == "train")
        out[split] = RawSplit(list(data.data), np.asarray(data.targets, dtype=np.int64), list(data.classes))
    return out


def _stl10(root: Path) -> dict[str, RawSplit]:
    import torchvision.datasets as tvd

    base = _need_dir(root / tvd.STL10.base_folder)
    labelled = [f"{split}_{part}.bin" for split in SPLITS for part in "Xy"]  # not the unlabeled images
    for name in labelled:
        _need_file(base / name)
    files = {"train_list": _unverified(tvd.STL10.train_list[:2]), "test_list": _unverified(tvd.STL10.test_list)}
    out = {}
    for split in SPLITS:
        data = _official(tvd.STL10, root, files, split=split)
        if len(data.data) != len(data.labels):
            raise DatasetError(f"{base / f'{split}_X.bin'}: {len(data.data)} images for {len(data.labels)} labels")
        # torchvision gives (N, C, H, W); the store takes HxWxC
        out[split] = RawSplit(list(data.data.transpose(0, 2, 3, 1)), data.labels.astype(np.int64))
    return out


def _cub(root: Path) -> dict[str, RawSplit]:
    base = _need_dir(root / "CUB_200_2011")

    def table(name):
        rows = [line.split() for line in _need_file(base / name).read_text().splitlines() if line.strip()]
        return {int(r[0]): r[1] for r in rows}

    paths, labels, is_train = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    out = {}
    for split, flag in (("train", "1"), ("test", "0")):
        ids = sorted(i for i in paths if is_train[i] == flag)
        out[split] = RawSplit(
            [base / "images" / paths[i] for i in ids], np.array([int(labels[i]) - 1 for i in ids], dtype=np.int64)
        )
    return out


FLOWERS_SPLITS = {
    "official": {"train": ("trnid", "valid"), "test": ("tstid",)},
    "release": {"train": ("trnid",), "test": ("valid",)},  # what the released code of Harun et al. probes
}


def _flowers(root: Path, splits: str) -> dict[str, RawSplit]:
    import torchvision.datasets as tvd

    base = _need_dir(root / "flowers-102")
    for key in ("label", "setid"):
        _need_file(base / tvd.Flowers102._file_dict[key][0])
    files = {"_file_dict": {key: (name, None) for key, (name, _) in tvd.Flowers102._file_dict.items()}}
    torchvision_split = {"trnid": "train", "valid": "val", "tstid": "test"}
    out = {}
    for split, keys in FLOWERS_SPLITS[splits].items():
        parts = [_official(tvd.Flowers102, root, files, split=torchvision_split[key]) for key in keys]
        # in image-id order (the names' zero-padded ids), as the legacy reader listed them
        pairs = sorted(
            ((path, label) for part in parts for path, label in zip(part._image_files, part._labels)),
            key=lambda pair: pair[0].name,
        )
        out[split] = RawSplit([path for path, _ in pairs], np.array([label for _, label in pairs], dtype=np.int64))
    return out


def _aircraft(root: Path) -> dict[str, RawSplit]:
    import torchvision.datasets as tvd

    base = _need_dir(root / "fgvc-aircraft-2013b" / "data")
    for name in ("variants.txt", "images_variant_trainval.txt", "images_variant_test.txt"):
        _need_file(base / name)
    out = {}
    for split in ("trainval", "test"):
        data = _official(tvd.FGVCAircraft, root, {}, split=split, annotation_level="variant")
        out["train" if split == "trainval" else split] = RawSplit(
            [Path(p) for p in data._image_files], np.array(data._labels, dtype=np.int64), list(data.classes)
        )
    return out


def _pets(root: Path) -> dict[str, RawSplit]:
    import torchvision.datasets as tvd

    base = _need_dir(root / "oxford-iiit-pet")
    for name in ("trainval.txt", "test.txt"):
        _need_file(base / "annotations" / name)
    out = {}
    for split in ("trainval", "test"):
        data = _official(tvd.OxfordIIITPet, root, {}, split=split, target_types="category")
        out["train" if split == "trainval" else split] = RawSplit(
            list(data._images), np.array(data._labels, dtype=np.int64)
        )
    return out


def _download(source: str, root: Path) -> None:
    """Fetch a dataset with torchvision's downloader (checksummed), then read it as usual."""
    import torchvision.datasets as tvd

    if source in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if source == "cifar10" else tvd.CIFAR100
        for train in (True, False):
            cls(str(root), train=train, download=True)
        return
    by_split = {
        "stl10": (tvd.STL10, ("train", "test")),
        "flowers102": (tvd.Flowers102, ("train",)),
        "fgvc_aircraft": (tvd.FGVCAircraft, ("trainval",)),
        "oxford_pets": (tvd.OxfordIIITPet, ("trainval",)),
    }
    if source not in by_split:
        raise DatasetError(f"{root}: {source} cannot be downloaded automatically; place it there by hand")
    cls, splits = by_split[source]
    for split in splits:
        cls(str(root), split=split, download=True)


def _imagenet100(spec: dict, root: Path) -> dict[str, RawSplit]:
    listed = resources.files("tunnelscope").joinpath("resources/imagenet100.txt").read_text().split()
    return _imagefolder(spec, _need_dir(root), default_classes=listed, test_dir="val")


# registry.FILE_SOURCES -> reader(spec, root) of its official on-disk layout.
FILE_READERS = {
    "imagefolder": lambda spec, root: _imagefolder(spec, _need_dir(root)),
    "imagenet": lambda spec, root: _imagefolder(spec, _need_dir(root), test_dir="val"),
    "imagenet100": _imagenet100,
    "cifar10": lambda spec, root: _cifar(root, hundred=False),
    "cifar100": lambda spec, root: _cifar(root, hundred=True),
    "stl10": lambda spec, root: _stl10(root),
    "cub200": lambda spec, root: _cub(root),
    "flowers102": lambda spec, root: _flowers(root, spec["splits"]),
    "fgvc_aircraft": lambda spec, root: _aircraft(root),
    "oxford_pets": lambda spec, root: _pets(root),
    "ninco": lambda spec, root: _single_tree(spec, _need_dir(root), "NINCO_OOD_classes"),
    "imagenet_r": lambda spec, root: _single_tree(spec, _need_dir(root), "imagenet-r"),
}


def load_source(spec: dict) -> dict[str, RawSplit]:
    """Raw train/test splits of a file-based dataset spec (its schema defaults filled in)."""
    spec = dataset_defaults(spec)
    source = spec["source"]
    root = Path(spec["root"])
    if spec.get("download"):
        _download(source, root)
    if source not in FILE_READERS:
        raise ValueError(f"unknown dataset source {source!r}; known: {', '.join(FILE_READERS)}")
    _need_dir(root)  # before a reader imports torchvision (and torch): validate's budget stays light
    splits = FILE_READERS[source](spec, root)
    return _subset(splits, spec)


# Published split sizes (train, test, classes) of the file sources, for planning a study whose
# files are not there yet (tunnelscope validate's budget); imagefolder has none.
OFFICIAL_SIZES = {
    "imagenet": (1_281_167, 50_000, 1000),
    "imagenet100": (126_689, 5_000, 100),
    "cifar10": (50_000, 10_000, 10),
    "cifar100": (50_000, 10_000, 100),
    "stl10": (5_000, 8_000, 10),
    "cub200": (5_994, 5_794, 200),
    "flowers102": (2_040, 6_149, 102),
    "fgvc_aircraft": (6_667, 3_333, 100),
    "oxford_pets": (3_680, 3_669, 37),
    "ninco": (4_703, 1_176, 64),
    "imagenet_r": (24_000, 6_000, 200),
}


def split_sizes(spec: dict) -> tuple[dict[str, int], int, bool]:
    """Images per split, the class count, and whether they were counted (else the published
    sizes, scaled to the spec's classes) of a dataset spec. Counting lists the files and decodes
    none; it never downloads. Raises DatasetError where the files are missing and no published
    size is known."""
    spec = dataset_defaults(spec)
    if spec["source"] == "corrupted":
        return split_sizes(spec["base"])
    if spec["source"] == "synthetic":
        return {s: spec[f"{s}_per_class"] * spec["classes"] for s in SPLITS}, spec["classes"], True
    try:
        raw = _sklearn_digits(spec) if spec["source"] == "sklearn_digits" else load_source({**spec, "download": False})
    except DatasetError:
        if spec["source"] not in OFFICIAL_SIZES:
            raise
        return (*_published_sizes(spec), False)
    return {s: len(raw[s].labels) for s in SPLITS}, _num_classes(raw), True


def _published_sizes(spec: dict) -> tuple[dict[str, int], int]:
    train, test, classes = OFFICIAL_SIZES[spec["source"]]
    listed = spec.get("classes") if isinstance(spec.get("classes"), list) else None
    k = min(spec.get("first_classes") or classes, len(listed) if listed else classes)
    per_class = spec.get("per_class")
    return {"train": per_class * k if per_class else train * k // classes, "test": test * k // classes}, k


def _subset(splits: dict[str, RawSplit], spec: dict) -> dict[str, RawSplit]:
    """First ``first_classes`` classes; ``per_class`` seeded random train images per class."""
    k, n = spec.get("first_classes"), spec.get("per_class")
    if k:
        splits = {s: replace(_select(r, r.labels < k), classes=r.classes and r.classes[:k]) for s, r in splits.items()}
    if n:
        rng = np.random.default_rng([spec["seed"], 104729])
        train = splits["train"]
        keep = np.zeros(len(train.labels), dtype=bool)
        for c in np.unique(train.labels):
            idx = np.flatnonzero(train.labels == c)
            if len(idx) < n:
                raise DatasetError(f"{spec['root']}: class {c} has {len(idx)} train images, fewer than per_class={n}")
            keep[rng.choice(idx, size=n, replace=False)] = True
        splits = {**splits, "train": _select(train, keep)}
    return splits


def _select(raw: RawSplit, mask: np.ndarray) -> RawSplit:
    return RawSplit([it for it, m in zip(raw.items, mask) if m], raw.labels[mask], raw.classes)


def _num_classes(splits: dict[str, RawSplit]) -> int:
    return int(max(int(r.labels.max()) for r in splits.values() if len(r.labels)) + 1)


# ---------------------------------------------------------------- prepare into a store


def prepare(
    name: str,
    spec: dict,
    resolution: int,
    out_dir: str | Path,
    threads: int = 1,
    interpolation: str = DEFAULT_TRANSFORM["interpolation"],
    crop_pct: float = DEFAULT_TRANSFORM["crop_pct"],
    native: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> ImageStore:
    """Write one dataset at ``resolution`` into the store ``out_dir`` (resuming a partial one):
    each image resized to the eval transform's shorter side int(R / crop_pct) with
    ``interpolation``, or kept as it is where ``native`` and its shorter side is R already;
    synthetic sets are rendered at R. Memory stays at one chunk of ``chunk_bytes`` of pixels."""
    from tunnelscope.runtime import bound_heap  # here: runtime imports torch, which validate need not

    bound_heap()
    shorter = int(resolution / crop_pct)
    meta = {
        "dataset": name,
        "resolution": int(resolution),
        "shorter_side": shorter,
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "native": bool(native),
    }
    with ThreadPoolExecutor(max(1, threads)) as pool:

        def plans_of(spec: dict) -> dict[str, SplitPlan]:
            spec = dataset_defaults(spec)
            if spec["source"] == "corrupted":
                meta["corruption"] = {k: spec[k] for k in ("of", "corruption", "severity", "seed")}
                return {s: _corrupted_plan(plan, spec, s, pool) for s, plan in plans_of(spec["base"]).items()}
            if spec["source"] == "synthetic":
                meta.update(num_classes=spec["classes"], shorter_side=resolution, native=True)
                return {split: _synthetic_plan(spec, split, resolution) for split in SPLITS}
            raw = _sklearn_digits(spec) if spec["source"] == "sklearn_digits" else load_source(spec)
            meta["num_classes"] = _num_classes(raw)
            if raw["train"].classes:  # for legends (the t-SNE figure); sources without names have none
                meta["class_names"] = raw["train"].classes[: meta["num_classes"]]
            on_bad = _on_bad_image(spec)
            return {
                s: _raw_plan(
                    raw[s], resolution, shorter, native, interpolation, on_bad, pool, f"{name}/{s}", chunk_bytes
                )
                for s in SPLITS
            }

        plans = plans_of(spec)
        write_store(out_dir, meta, plans, _on_bad_image(spec))
    return ImageStore(out_dir)


def _on_bad_image(spec: dict) -> str:
    """The on_bad_image setting of the files a spec reads (a corrupted copy: its clean set's);
    generated sources have no unreadable files."""
    return dataset_defaults(spec.get("base", spec)).get("on_bad_image", "error")


def _corrupted_plan(plan: SplitPlan, spec: dict, split: str, pool) -> SplitPlan:
    """``plan``'s images through ``spec``'s corruption, each with its own seeded draws, on the
    pool's threads."""
    # torchvision's v2 transforms import torch._dynamo: only when used
    from tunnelscope.data import corruptions

    name, severity, seed = spec["corruption"], spec["severity"], spec["seed"]

    def fill(start: int, stop: int) -> list:
        def one(k: int, image):
            if isinstance(image, Exception):
                return image
            return corruptions.corrupt(image, name, severity, corruptions.image_generator(seed, split, start + k))

        return list(pool.map(one, range(stop - start), plan.fill(start, stop)))

    return replace(plan, fill=fill)


def _synthetic_plan(spec: dict, split: str, resolution: int) -> SplitPlan:
    """Rendered one class per chunk (the generator's own random stream per class)."""
    per_class, classes = spec[f"{split}_per_class"], spec["classes"]
    labels = np.repeat(np.arange(classes, dtype=np.int64), per_class)
    shapes = np.full((len(labels), 2), resolution, dtype=np.int64)

    def fill(start: int, stop: int):
        cls = start // per_class
        return synthetic.class_images(
            spec["family"], spec["class_offset"] + cls, per_class, resolution, split, spec["seed"]
        )

    return SplitPlan(labels, shapes, fill, [(k * per_class, (k + 1) * per_class) for k in range(classes)])


def _raw_plan(
    raw: RawSplit,
    resolution: int,
    shorter: int,
    native: bool,
    interpolation: str,
    on_bad_image: str,
    pool,
    desc: str,
    chunk_bytes: int = CHUNK_BYTES,
) -> SplitPlan:
    """Stored sizes from the image headers (no decoding), then images decoded chunk by chunk."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    sizes = list(pool.map(_image_size, raw.items))
    readable = [i for i, size in enumerate(sizes) if not isinstance(size, Exception)]
    for i in sorted(set(range(len(sizes))) - set(readable)):
        if on_bad_image == "error":
            raise DatasetError(
                f"{raw.items[i]}: unreadable image ({sizes[i]}); set on_bad_image: skip to leave such files out"
            )
        log.warning("skipping unreadable image %s (%s)", raw.items[i], sizes[i])
    if len(readable) < len(sizes):
        log.warning("%s: skipped %d unreadable images of %d", desc, len(sizes) - len(readable), len(sizes))
    if not readable:
        raise DatasetError(f"{desc}: no readable images")
    items = [raw.items[i] for i in readable]
    shapes = np.array([stored_size(*sizes[i], resolution, shorter, native) for i in readable], dtype=np.int64).reshape(
        -1, 2
    )
    mode = InterpolationMode(interpolation)

    def load(i: int):
        try:
            image = _open_rgb(items[i])
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            return exc
        h, w = (int(v) for v in shapes[i])
        if image.size != (w, h):
            image = TF.resize(image, [h, w], interpolation=mode)
        return np.asarray(image, dtype=np.uint8)

    return SplitPlan(
        raw.labels[readable].astype(np.int64),
        shapes,
        parallel_fill(pool, load),
        byte_chunks(shapes, chunk_bytes),
        names=items,
    )


def _open_rgb(item) -> Image.Image:
    if isinstance(item, np.ndarray):
        return Image.fromarray(item.squeeze()).convert("RGB")
    with Image.open(item) as img:
        img.load()
        return img.convert("RGB")


def _image_size(item):
    """(height, width) from the header alone, or the Exception that reading it raised."""
    if isinstance(item, np.ndarray):
        return item.shape[:2]
    try:
        with Image.open(item) as img:
            return img.size[1], img.size[0]
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return exc


def _sklearn_digits(spec: dict) -> dict[str, RawSplit]:
    """scikit-learn's bundled 8x8 handwritten digits (real scans), stratified split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    raw = RawSplit(list(gray), digits.target.astype(np.int64), [str(d) for d in range(10)])
    return _stratified(raw, spec["test_fraction"], spec["seed"])
