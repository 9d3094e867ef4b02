"""The prepare stage: a dataset spec (a ``datasets:`` entry of the config) written into a store
(``data/store.py``) per (dataset, transform tag: resolution, interpolation, crop_pct, native;
``registry.transform_tag`` names it, ``RESULTS/prepared/DATASET/TAG``): every image kept whole
at the eval transform's resize, train and test splits, written chunk by chunk. Training and
extraction read that store instead of decoding and resizing the same images again every epoch.

The images come from ``data/sources.py`` (read from files), ``data/synthetic.py`` (rendered) or
another spec's images through ``data/corruptions.py`` (a corrupted copy).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tunnelscope.data import synthetic
from tunnelscope.data.sources import RawSplit, num_classes, read_images
from tunnelscope.data.splits import SPLITS
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
from tunnelscope.study.schema import dataset_defaults

log = logging.getLogger("tunnelscope.datasets")


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
            raw = read_images(spec)
            meta["num_classes"] = num_classes(raw)
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
