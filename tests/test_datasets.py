"""Dataset readers on tiny files written in each dataset's real on-disk format."""

import pickle
from importlib import resources
from pathlib import Path

import legacy_readers
import numpy as np
import pytest
from PIL import Image

from inmemory import eval_transform
from tunnelscope.data import synthetic
from tunnelscope.data.loader import center_crop
from tunnelscope.data.prepare import prepare
from tunnelscope.data.sources import FILE_READERS, load_source
from tunnelscope.data.store import DatasetError, ImageStore, StoreError
from tunnelscope.study.schema import dataset_defaults

RNG = np.random.default_rng(0)


def _image(path: Path, size=(20, 14), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(RNG.integers(0, 256, size=shape, dtype=np.uint8), mode=None).convert(mode).save(path)


def _spec(source, root, **extra):
    return {
        "source": source,
        "root": str(root),
        "seed": 0,
        "test_fraction": 0.2,
        "on_bad_image": "error",
        "layout": "split_dirs",
        **extra,
    }


@pytest.fixture()
def folder_tree(tmp_path):
    """root/{train,test}/CLASS with JPEG, PNG and grayscale files."""
    for split, n in (("train", 3), ("test", 2)):
        for c, ext, mode in (("cat", "jpg", "RGB"), ("dog", "png", "RGB"), ("emu", "JPEG", "L")):
            for i in range(n):
                _image(tmp_path / split / c / f"{i}.{ext}", mode=mode)
    return tmp_path


def test_eval_transform_resizes_then_center_crops():
    img = Image.fromarray(np.zeros((30, 60), dtype=np.uint8))  # grayscale, wide
    out = eval_transform(img, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_imagefolder_split_dirs(folder_tree):
    data = prepare("pets", _spec("imagefolder", folder_tree), 16, folder_tree / "store")
    assert data.num_classes == 3
    assert len(data.splits["train"]) == 9 and len(data.splits["test"]) == 6
    # 20 x 14 images stored whole at the eval resize (shorter side int(16 / 0.875) = 18).
    assert data.splits["train"].image(0).shape == (18, 25, 3) and data.splits["train"].uniform_shape == (18, 25)
    assert data.splits["train"].labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.meta["class_names"] == ["cat", "dog", "emu"]  # the folder names, for figure legends


def test_imagefolder_class_list_orders_labels_and_must_match(folder_tree):
    raw = load_source(_spec("imagefolder", folder_tree, classes=["emu", "cat"]))
    assert raw["train"].labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert raw["train"].classes == raw["test"].classes == ["emu", "cat"]
    assert all("emu" in str(p) for p in raw["train"].items[:3])
    with pytest.raises(DatasetError, match="missing folders: yak"):
        load_source(_spec("imagefolder", folder_tree, classes=["cat", "yak"]))


def test_single_tree_split_is_seeded_and_stratified(tmp_path):
    for c in ("a", "b"):
        for i in range(10):
            _image(tmp_path / c / f"{i}.png")
    spec = _spec("imagefolder", tmp_path, layout="single")
    first, again = load_source(spec), load_source(spec)
    other = load_source(dict(spec, seed=1))
    assert np.bincount(first["test"].labels).tolist() == [2, 2]
    assert first["test"].items == again["test"].items
    assert first["test"].items != other["test"].items
    assert not set(first["test"].items) & set(first["train"].items)


def test_missing_root_empty_class_and_bad_images_are_named(folder_tree, tmp_path):
    with pytest.raises(DatasetError, match="nowhere: dataset directory not found"):
        load_source(_spec("imagefolder", tmp_path / "nowhere"))
    (folder_tree / "train" / "fox").mkdir()
    (folder_tree / "test" / "fox").mkdir()
    with pytest.raises(DatasetError, match="fox: empty class folder"):
        load_source(_spec("imagefolder", folder_tree))
    (folder_tree / "train" / "fox").rmdir()
    (folder_tree / "test" / "fox").rmdir()
    good = folder_tree / "train" / "cat" / "0.jpg"
    good.write_bytes(good.read_bytes()[:40])  # truncated JPEG
    with pytest.raises(DatasetError, match="0.jpg: unreadable image"):
        prepare("x", _spec("imagefolder", folder_tree), 16, folder_tree / "store")
    data = prepare("x", _spec("imagefolder", folder_tree, on_bad_image="skip"), 16, folder_tree / "store")
    assert len(data.splits["train"]) == 8


def _write_cifar(root: Path, hundred: bool, n_train=6, n_test=4):
    base = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    base.mkdir(parents=True)
    key = "fine_labels" if hundred else "labels"

    def batch(n, offset):
        return {"data": RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8), key: [(i + offset) % 5 for i in range(n)]}

    names = (
        {"train": ["train"], "test": ["test"]}
        if hundred
        else {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    )
    for split, files in names.items():
        for name in files:
            with open(base / name, "wb") as fh:
                pickle.dump(batch(n_train if split == "train" else n_test, 0), fh)
    _write_cifar_meta(base, hundred)


def _write_cifar_meta(base: Path, hundred: bool, n_classes: int = 5):
    """The meta file of the official layout: the class names."""
    key = "fine_label_names" if hundred else "label_names"
    with open(base / ("meta" if hundred else "batches.meta"), "wb") as fh:
        pickle.dump({key: [f"class{i}" for i in range(n_classes)]}, fh)


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_pickles(tmp_path, hundred):
    _write_cifar(tmp_path, hundred)
    data = prepare("c", _spec("cifar100" if hundred else "cifar10", tmp_path), 32, tmp_path / "store")
    n_train = 6 if hundred else 30
    assert len(data.splits["train"]) == n_train and len(data.splits["test"]) == 4
    assert data.num_classes == 5 and data.splits["test"].uniform_shape == (36, 36)  # the eval resize, kept whole
    native = prepare("c", _spec("cifar100" if hundred else "cifar10", tmp_path), 32, tmp_path / "native", native=True)
    assert native.splits["test"].uniform_shape == (32, 32)


def test_cifar_image_layout_is_channel_planes(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    red = np.zeros((1, 3, 32, 32), dtype=np.uint8)
    red[:, 0] = 255
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / name, "wb") as fh:
            pickle.dump({"data": red.reshape(1, -1), "labels": [0]}, fh)
    _write_cifar_meta(base, hundred=False, n_classes=1)
    img = load_source(_spec("cifar10", tmp_path))["test"].items[0]
    assert img.shape == (32, 32, 3) and img[..., 0].min() == 255 and img[..., 1].max() == 0


def test_stl10_binary(tmp_path):
    base = tmp_path / "stl10_binary"
    base.mkdir()
    for split, n in (("train", 4), ("test", 3)):
        x = np.zeros((n, 3, 96, 96), dtype=np.uint8)
        x[:, 1, :, :48] = 200  # green in the left half of the image (column-major storage)
        x.transpose(0, 1, 3, 2).tofile(base / f"{split}_X.bin")  # STL stores (N, C, W, H)
        np.arange(1, n + 1, dtype=np.uint8).tofile(base / f"{split}_y.bin")
    raw = load_source(_spec("stl10", tmp_path))
    img = raw["train"].items[0]
    assert img.shape == (96, 96, 3) and img[:, :48, 1].min() == 200 and img[:, 48:, 1].max() == 0
    assert raw["test"].labels.tolist() == [0, 1, 2]


def test_cub200_official_split(tmp_path):
    base = tmp_path / "CUB_200_2011"
    rows, labels, split = [], [], []
    for i in range(1, 7):
        cls = 1 + (i - 1) % 2
        rel = f"{cls:03d}.Bird/img_{i}.jpg"
        _image(base / "images" / rel)
        rows.append(f"{i} {rel}")
        labels.append(f"{i} {cls}")
        split.append(f"{i} {1 if i <= 4 else 0}")
    (base / "images.txt").write_text("\n".join(rows))
    (base / "image_class_labels.txt").write_text("\n".join(labels))
    (base / "train_test_split.txt").write_text("\n".join(split))
    raw = load_source(_spec("cub200", tmp_path))
    assert len(raw["train"].items) == 4 and raw["test"].labels.tolist() == [0, 1]


def test_flowers102_official_and_release_splits(tmp_path):
    from scipy.io import savemat

    base = tmp_path / "flowers-102"
    for i in range(1, 9):
        _image(base / "jpg" / f"image_{i:05d}.jpg")
    savemat(base / "imagelabels.mat", {"labels": np.array([[1, 1, 2, 2, 3, 3, 1, 2]])})
    savemat(
        base / "setid.mat",
        {"trnid": np.array([[1, 3, 5]]), "valid": np.array([[2, 4, 6]]), "tstid": np.array([[7, 8]])},
    )
    release = load_source(_spec("flowers102", tmp_path, splits="release"))  # what the paper's code probes
    assert [p.name for p in release["test"].items] == ["image_00002.jpg", "image_00004.jpg", "image_00006.jpg"]
    assert release["train"].labels.tolist() == [0, 1, 2]
    official = load_source(_spec("flowers102", tmp_path))
    assert [p.name for p in official["test"].items] == ["image_00007.jpg", "image_00008.jpg"]
    assert len(official["train"].items) == 6 and official["test"].labels.tolist() == [0, 1]


def test_fgvc_aircraft_variants(tmp_path):
    base = tmp_path / "fgvc-aircraft-2013b" / "data"
    for i in range(4):
        _image(base / "images" / f"{1000 + i}.jpg")
    (base / "variants.txt").write_text("707-320\nA300B4\n")
    (base / "images_variant_trainval.txt").write_text("1000 707-320\n1001 A300B4\n1002 A300B4\n")
    (base / "images_variant_test.txt").write_text("1003 707-320\n")
    raw = load_source(_spec("fgvc_aircraft", tmp_path))
    assert raw["train"].labels.tolist() == [0, 1, 1] and raw["test"].labels.tolist() == [0]


def test_oxford_pets_trainval_test(tmp_path):
    base = tmp_path / "oxford-iiit-pet"
    for name in ("Abyssinian_1", "Abyssinian_2", "beagle_1"):
        _image(base / "images" / f"{name}.jpg")
    (base / "annotations").mkdir()
    (base / "annotations" / "trainval.txt").write_text("Abyssinian_1 1 1 1\nbeagle_1 2 2 1\n")
    (base / "annotations" / "test.txt").write_text("Abyssinian_2 1 1 1\n")
    data = prepare("pets", _spec("oxford_pets", tmp_path), 24, tmp_path / "store")
    assert data.splits["train"].labels.tolist() == [0, 1] and data.splits["test"].image(0).shape == (27, 38, 3)


@pytest.mark.parametrize("source,subdir", [("ninco", "NINCO_OOD_classes"), ("imagenet_r", "imagenet-r")])
def test_single_tree_ood_sets_split_80_20(tmp_path, source, subdir):
    for c in ("x", "y"):
        for i in range(5):
            _image(tmp_path / subdir / c / f"{i}.jpg")
    raw = load_source(_spec(source, tmp_path))
    assert np.bincount(raw["test"].labels).tolist() == [1, 1] and len(raw["train"].items) == 8


def test_imagenet100_class_list_and_subsets(tmp_path):
    wnids = resources.files("tunnelscope").joinpath("resources/imagenet100.txt").read_text().split()
    assert len(wnids) == len(set(wnids)) == 100
    for wnid in wnids[:12]:
        for i in range(3):
            _image(tmp_path / "train" / wnid / f"{wnid}_{i}.JPEG", size=(8, 8))
        _image(tmp_path / "val" / wnid / f"val_{wnid}.JPEG", size=(8, 8))
    with pytest.raises(DatasetError, match="class list does not match the tree"):
        load_source(_spec("imagenet100", tmp_path))
    raw = load_source(_spec("imagenet100", tmp_path, first_classes=10, per_class=2, classes=wnids[:12]))
    assert np.bincount(raw["train"].labels).tolist() == [2] * 10
    assert raw["train"].classes == raw["test"].classes == wnids[:10]  # first_classes keeps their names
    assert len(raw["test"].items) == 10
    again = load_source(_spec("imagenet100", tmp_path, first_classes=10, per_class=2, classes=wnids[:12]))
    assert raw["train"].items == again["train"].items
    with pytest.raises(DatasetError, match="fewer than per_class=5"):
        load_source(_spec("imagenet100", tmp_path, per_class=5, classes=wnids[:12]))


def test_subset_classes_in_sorted_folder_order(tmp_path):
    wnids = resources.files("tunnelscope").joinpath("resources/imagenet100.txt").read_text().split()
    for wnid in wnids:
        _image(tmp_path / "train" / wnid / "a.JPEG", size=(8, 8))
        _image(tmp_path / "val" / wnid / "v.JPEG", size=(8, 8))
    listed = load_source(_spec("imagenet100", tmp_path, first_classes=3))
    assert [p.parent.name for p in listed["train"].items] == wnids[:3]  # the CMC list's order
    release = load_source(_spec("imagenet100", tmp_path, first_classes=3, class_order="sorted"))
    assert [p.parent.name for p in release["train"].items] == sorted(wnids)[:3] != wnids[:3]
    assert [p.parent.name for p in release["test"].items] == sorted(wnids)[:3]


def test_imagenet_1k_tree_with_per_class_probe_set(tmp_path):
    for wnid in ("n01440764", "n01443537", "n01484850"):
        for i in range(4):
            _image(tmp_path / "train" / wnid / f"{wnid}_{i}.JPEG", size=(10, 12))
        _image(tmp_path / "val" / wnid / f"ILSVRC2012_val_{wnid}.JPEG", size=(10, 12))
    raw = load_source(_spec("imagenet", tmp_path, per_class=2))
    assert np.bincount(raw["train"].labels).tolist() == [2, 2, 2] and raw["test"].labels.tolist() == [0, 1, 2]


def test_native_resolution_keeps_images_as_they_are():
    image = Image.fromarray(RNG.integers(0, 256, size=(32, 32, 3), dtype=np.uint8))
    kept = eval_transform(image, 32, native=True)
    assert np.array_equal(kept, np.asarray(image))
    resized = eval_transform(image, 32)  # Resize(36) then CenterCrop(32): not the original pixels
    assert resized.shape == kept.shape and not np.array_equal(resized, kept)
    assert eval_transform(image, 64, native=True).shape == (64, 64, 3)  # other sizes: the eval transform


def test_sklearn_digits_are_real_and_stratified(tmp_path):
    data = prepare("digits", {"source": "sklearn_digits", "test_fraction": 0.2, "seed": 0}, 32, tmp_path / "store")
    assert data.num_classes == 10
    assert len(data.splits["train"]) + len(data.splits["test"]) == 1797
    assert data.splits["test"].uniform_shape == (36, 36)


SYNTHETIC = {
    "source": "synthetic",
    "family": "shapes",
    "classes": 2,
    "train_per_class": 3,
    "test_per_class": 2,
    "seed": 0,
    "class_offset": 0,
}


def test_store_holds_the_generated_images_and_numpy_alone_reads_it(tmp_path):
    data = prepare("toy", SYNTHETIC, 16, tmp_path / "toy")
    images, labels = synthetic.generate("shapes", 2, 3, 16, "train")
    assert np.array_equal(data.splits["train"].array(), images) and data.num_classes == 2
    # The documented layout, read with numpy only.
    pixels = np.load(tmp_path / "toy/train.pixels.npy", mmap_mode="r")
    offset, h, w = np.load(tmp_path / "toy/train.index.npy")[4]
    assert np.array_equal(pixels[offset : offset + h * w * 3].reshape(h, w, 3), images[4])
    assert np.load(tmp_path / "toy/train.labels.npy").tolist() == labels.tolist()


def test_store_centre_crops_are_the_eval_transform(folder_tree, tmp_path):
    store = prepare("pets", _spec("imagefolder", folder_tree), 16, tmp_path / "store")
    raw = load_source(_spec("imagefolder", folder_tree))
    for i, path in enumerate(raw["test"].items):
        with Image.open(path) as img:
            assert np.array_equal(center_crop(store.splits["test"].image(i), 16), eval_transform(img, 16)), path


def test_truncated_or_unfinished_stores_are_named(tmp_path):
    prepare("toy", SYNTHETIC, 16, tmp_path / "toy")
    pixels = tmp_path / "toy/train.pixels.npy"
    pixels.write_bytes(pixels.read_bytes()[:200])
    with pytest.raises(StoreError, match="train.pixels.npy: truncated"):
        ImageStore(tmp_path / "toy")
    with pytest.raises(StoreError, match="nowhere: not a prepared store"):
        ImageStore(tmp_path / "nowhere")


PREPARE_SCRIPT = """
import sys
from tunnelscope.data.prepare import prepare
spec = {"source": "imagefolder", "root": sys.argv[1], "seed": 0, "test_fraction": 0.2, "on_bad_image": "error", "layout": "split_dirs"}
prepare("big", spec, 64, sys.argv[2], threads=1, chunk_bytes=60000)  # many small chunks
"""


def test_prepare_killed_part_way_resumes_to_the_same_store(tmp_path):
    """A prepare killed at a random point leaves no store that reads as complete, and its rerun
    writes the files an uninterrupted run writes."""
    import subprocess
    import sys
    import time

    for split, n in (("train", 400), ("test", 40)):
        for i in range(n):
            _image(
                tmp_path / "tree" / split / f"c{i % 4}" / f"{i}.png",
                size=(int(RNG.integers(150, 300)), int(RNG.integers(150, 300))),
            )
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([sys.executable, "-c", PREPARE_SCRIPT, str(tmp_path / "tree"), str(full)], check=True, timeout=300)
    proc = subprocess.Popen([sys.executable, "-c", PREPARE_SCRIPT, str(tmp_path / "tree"), str(killed)])
    progress = tmp_path / ".killed.partial" / "progress.json"
    deadline = time.time() + 120
    while not progress.exists() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(float(RNG.uniform(0.0, 0.1)))
    proc.kill()
    proc.wait()
    assert not killed.exists(), "the run finished before it could be killed"
    with pytest.raises(StoreError):
        ImageStore(killed)
    subprocess.run([sys.executable, "-c", PREPARE_SCRIPT, str(tmp_path / "tree"), str(killed)], check=True, timeout=300)
    assert not (tmp_path / ".killed.partial").exists()
    for name in sorted(p.name for p in full.iterdir()):
        assert (full / name).read_bytes() == (killed / name).read_bytes(), name


def _write_stl10(root: Path, sizes=(("train", 5), ("test", 3))):
    base = root / "stl10_binary"
    base.mkdir(parents=True)
    for split, n in sizes:
        RNG.integers(0, 256, size=(n, 3, 96, 96), dtype=np.uint8).tofile(base / f"{split}_X.bin")
        RNG.integers(1, 11, size=n, dtype=np.uint8).tofile(base / f"{split}_y.bin")


def _write_flowers(root: Path, n: int = 9):
    from scipy.io import savemat

    base = root / "flowers-102"
    for i in range(1, n + 1):
        _image(base / "jpg" / f"image_{i:05d}.jpg", size=(20 + i, 14))
    savemat(base / "imagelabels.mat", {"labels": np.array([[1 + i % 3 for i in range(n)]])})
    ids = RNG.permutation(np.arange(1, n + 1))  # the real setid.mat lists are not sorted
    savemat(base / "setid.mat", {"trnid": ids[None, :3], "valid": ids[None, 3:6], "tstid": ids[None, 6:]})


def _write_aircraft(root: Path):
    base = root / "fgvc-aircraft-2013b" / "data"
    for i in range(5):
        _image(base / "images" / f"{1000 + i}.jpg")
    (base / "variants.txt").write_text("707-320\nA300B4\nF/A-18\n")
    (base / "images_variant_trainval.txt").write_text("1000 707-320\n1001 F/A-18\n1002 A300B4\n")
    (base / "images_variant_test.txt").write_text("1003 707-320\n1004 F/A-18\n")


def _write_pets(root: Path):
    base = root / "oxford-iiit-pet"
    names = ("Abyssinian_1", "Abyssinian_2", "beagle_1", "great_pyrenees_3")
    for name in names:
        _image(base / "images" / f"{name}.jpg")
    (base / "annotations").mkdir()
    (base / "annotations" / "trainval.txt").write_text("Abyssinian_1 1 1 1\nbeagle_1 2 2 1\ngreat_pyrenees_3 3 2 2\n")
    (base / "annotations" / "test.txt").write_text("Abyssinian_2 1 1 1\n")


LAYOUTS = {
    "cifar10": lambda root: _write_cifar(root, hundred=False),
    "cifar100": lambda root: _write_cifar(root, hundred=True),
    "stl10": _write_stl10,
    "flowers102": _write_flowers,
    "fgvc_aircraft": _write_aircraft,
    "oxford_pets": _write_pets,
}


@pytest.mark.parametrize("source", list(LAYOUTS))
def test_torchvision_readers_give_the_hand_written_readers_images_and_labels(tmp_path, source):
    """torchvision's dataset classes replaced the readers in tests/legacy_readers.py: the same
    images (arrays, or files in the same order), labels and class names on each official layout."""
    LAYOUTS[source](tmp_path)
    for splits in ("official", "release") if source == "flowers102" else ("official",):
        spec = dataset_defaults(_spec(source, tmp_path, **({"splits": splits} if source == "flowers102" else {})))
        new, old = FILE_READERS[source](spec, tmp_path), legacy_readers.READERS[source](spec, tmp_path)
        assert new.keys() == old.keys() == {"train", "test"}
        for split in new:
            assert new[split].labels.dtype == np.int64 and new[split].labels.tolist() == old[split].labels.tolist()
            assert new[split].classes == old[split].classes
            assert len(new[split].items) == len(old[split].items) > 0
            for a, b in zip(new[split].items, old[split].items):
                assert np.array_equal(a, b) if isinstance(b, np.ndarray) else Path(a) == b


def test_a_missing_or_foreign_file_is_named(tmp_path):
    _write_cifar(tmp_path, hundred=False)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(DatasetError, match="batches.meta"):
        load_source(_spec("cifar10", tmp_path))
    _write_aircraft(tmp_path)
    (tmp_path / "fgvc-aircraft-2013b/data/images_variant_test.txt").write_text("1003 747-400\n")
    with pytest.raises(DatasetError, match="not a readable FGVCAircraft layout .*747-400"):
        load_source(_spec("fgvc_aircraft", tmp_path))
