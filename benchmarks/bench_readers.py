"""Dataset readers: torchvision's dataset classes (data/sources.py) against the hand-written
readers they replaced (tests/legacy_readers.py), on each official layout at its published
split sizes.

Target (issue 30): no slower. Each reader returns the splits' images (arrays for CIFAR and
STL-10, file paths for the others) and labels, nothing decoded; the two run alternately, best of
``--repeats`` each after one untimed call of each (imports, file cache), wall and CPU seconds
(process time) of the same calls.
"""

import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import parser, report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import legacy_readers  # noqa: E402

# (train, test) images of each official split, as published
SIZES = {
    "cifar10": (50_000, 10_000),
    "stl10": (5_000, 8_000),
    "flowers102": (2_040, 6_149),
    "fgvc_aircraft": (6_667, 3_333),
    "oxford_pets": (3_680, 3_669),
}


def write_cifar(root: Path, n_train: int, n_test: int, rng) -> None:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    per_batch = n_train // 5
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        with open(base / name, "wb") as fh:
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            pickle.dump({"data": data, "labels": rng.integers(0, 10, n).tolist()}, fh)
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)


def write_stl10(root: Path, n_train: int, n_test: int, rng) -> None:
    base = root / "stl10_binary"
    base.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8).tofile(base / f"{split}_X.bin")
        rng.integers(1, 11, n, dtype=np.uint8).tofile(base / f"{split}_y.bin")


def write_flowers(root: Path, n_train: int, n_test: int, rng) -> None:
    from scipy.io import savemat

    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    n = 2 * n_train + n_test  # train and val are the same size
    for i in range(1, n + 1):
        (base / "jpg" / f"image_{i:05d}.jpg").touch()  # the readers list files; none decodes them
    ids = rng.permutation(np.arange(1, n + 1))
    savemat(base / "imagelabels.mat", {"labels": rng.integers(1, 103, (1, n))})
    sets = {"trnid": ids[:n_train], "valid": ids[n_train : 2 * n_train], "tstid": ids[2 * n_train :]}
    savemat(base / "setid.mat", {k: v[None, :] for k, v in sets.items()})


def write_aircraft(root: Path, n_train: int, n_test: int, rng) -> None:
    base = root / "fgvc-aircraft-2013b" / "data"
    (base / "images").mkdir(parents=True)
    variants = [f"variant-{i}" for i in range(100)]
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    image = 1_000_000
    for split, n in (("trainval", n_train), ("test", n_test)):
        lines = []
        for _ in range(n):
            (base / "images" / f"{image}.jpg").touch()
            lines.append(f"{image} {variants[rng.integers(100)]}")
            image += 1
        (base / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")


def write_pets(root: Path, n_train: int, n_test: int, rng) -> None:
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    breeds = [f"breed{i}" for i in range(37)]
    for split, n in (("trainval", n_train), ("test", n_test)):
        lines = []
        for i in range(n):
            label = int(rng.integers(37))
            name = f"{breeds[label]}_{split}{i}"
            (base / "images" / f"{name}.jpg").touch()
            lines.append(f"{name} {label + 1} 1 1")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")


WRITERS = {
    "cifar10": write_cifar,
    "stl10": write_stl10,
    "flowers102": write_flowers,
    "fgvc_aircraft": write_aircraft,
    "oxford_pets": write_pets,
}


def prepare_pets(root: Path, repeats: int) -> tuple[list, list]:
    """Best wall and CPU seconds of the whole prepare job (images decoded and stored at 32 px) on
    the Oxford-IIIT Pets layout with real (small) JPEGs, its reader legacy or torchvision's."""
    from PIL import Image

    from tunnelscope.data import sources
    from tunnelscope.data.prepare import prepare
    from tunnelscope.study.schema import dataset_defaults

    for path in (root / "oxford-iiit-pet" / "images").iterdir():
        Image.new("RGB", (64, 48), (path.stat().st_ino % 256, 90, 160)).save(path, quality=90)
    spec = dataset_defaults({"source": "oxford_pets", "root": str(root)})
    readers = {"legacy": legacy_readers.READERS["oxford_pets"], "torchvision": sources.FILE_READERS["oxford_pets"]}
    best = {name: [np.inf, np.inf] for name in readers}
    for i in range(repeats):
        for name, reader in readers.items():
            sources.FILE_READERS["oxford_pets"] = reader
            wall, cpu, _ = timed(lambda: prepare("pets", spec, 32, root / f"store-{name}-{i}"))
            best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
    sources.FILE_READERS["oxford_pets"] = readers["torchvision"]
    return best["legacy"], best["torchvision"]


def timed(fn) -> tuple[float, float, dict]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    from tunnelscope.data.sources import FILE_READERS
    from tunnelscope.study.schema import dataset_defaults

    repeats = 1 if args.smoke else args.repeats
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for source, (n_train, n_test) in SIZES.items():
            if args.smoke:
                n_train, n_test = 10, 5
            root = Path(tmp) / source
            WRITERS[source](root, n_train, n_test, np.random.default_rng(0))
            spec = dataset_defaults({"source": source, "root": str(root)})
            readers = {"legacy": legacy_readers.READERS[source], "torchvision": FILE_READERS[source]}
            best = {name: [np.inf, np.inf] for name in readers}
            images = n_train + n_test + (n_train if source == "flowers102" else 0)  # its train = trnid + valid
            for reader in readers.values():  # warm: imports (a prepare job imports torchvision anyway), file cache
                reader(spec, root)
            for _ in range(repeats):
                for name, reader in readers.items():  # alternating, so drift in the machine's load hits both
                    wall, cpu, out = timed(lambda: reader(spec, root))
                    best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
                    assert sum(len(s.labels) for s in out.values()) == images
            (lw, lc), (tw, tc) = best["legacy"], best["torchvision"]
            rows.append(f"| {source} | {images:,} | {lw:.3f} / {lc:.3f} | {tw:.3f} / {tc:.3f} | {tw / lw:.2f}x |")
        (lw, lc), (tw, tc) = prepare_pets(Path(tmp) / "oxford_pets", repeats)
        rows.append(
            f"| oxford_pets, whole prepare job | | {lw:.3f} / {lc:.3f} | {tw:.3f} / {tc:.3f} | {tw / lw:.2f}x |"
        )
    lines = [
        f"Best of {repeats}, alternating; each reader returns both splits' images (arrays or paths) and labels.",
        "The last row: the whole prepare job (decoding 64x48 JPEGs, storing them at 32 px) with either reader.",
        "",
        "| source | images | legacy wall / CPU s | torchvision wall / CPU s | wall ratio |",
        "|---|---|---|---|---|",
        *rows,
    ]
    report("Dataset readers: torchvision's classes vs the hand-written ones", lines, args)


if __name__ == "__main__":
    main()
