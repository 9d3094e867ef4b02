"""Dataset sources and the prepared-image cache.

``prepare`` turns a dataset spec (a ``datasets:`` entry of the config) into uint8 images at one
resolution, split into train and test, saved as one ``.npz`` per (dataset, resolution). Training
and extraction read that file instead of decoding or rendering images again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import synthetic
from .io import atomic_path

SPLITS = ("train", "test")


@dataclass
class Split:
    images: np.ndarray  # (N, R, R, 3) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Prepared:
    name: str
    resolution: int
    num_classes: int
    splits: dict[str, Split]


def prepare(name: str, spec: dict, resolution: int) -> Prepared:
    source = spec["source"]
    if source == "synthetic":
        splits = {
            split: Split(
                *synthetic.generate(
                    spec["family"],
                    spec["classes"],
                    spec[f"{split}_per_class"],
                    resolution,
                    split,
                    seed=spec["seed"],
                    class_offset=spec["class_offset"],
                )
            )
            for split in SPLITS
        }
        return Prepared(name, resolution, spec["classes"], splits)
    if source == "sklearn_digits":
        return _sklearn_digits(name, spec, resolution)
    raise ValueError(f"datasets.{name}.source: unknown source {source!r}")


def _sklearn_digits(name: str, spec: dict, resolution: int) -> Prepared:
    """scikit-learn's bundled 8x8 handwritten digits (real scans), upscaled to RGB."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    gray = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    # Bicubic, as the paper's eval transform resizes with bicubic interpolation.
    big = np.stack([np.asarray(Image.fromarray(g).resize((resolution, resolution), Image.BICUBIC)) for g in gray])
    rgb = np.repeat(big[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=spec["test_fraction"], stratify=labels, random_state=spec["seed"]
    )
    splits = {
        "train": Split(rgb[np.sort(idx_train)], labels[np.sort(idx_train)]),
        "test": Split(rgb[np.sort(idx_test)], labels[np.sort(idx_test)]),
    }
    return Prepared(name, resolution, 10, splits)


def save(prepared: Prepared, path: str) -> None:
    arrays = {"num_classes": np.int64(prepared.num_classes), "resolution": np.int64(prepared.resolution)}
    for split, data in prepared.splits.items():
        arrays[f"{split}_images"] = data.images
        arrays[f"{split}_labels"] = data.labels
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load(path: str, name: str = "") -> Prepared:
    try:
        with np.load(path, allow_pickle=False) as z:
            splits = {s: Split(z[f"{s}_images"], z[f"{s}_labels"]) for s in SPLITS}
            return Prepared(name, int(z["resolution"]), int(z["num_classes"]), splits)
    except (OSError, KeyError, ValueError) as exc:
        raise RuntimeError(f"{path}: not a readable prepared dataset ({exc}); delete it and rerun") from exc
