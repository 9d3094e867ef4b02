"""The library's streaming paths called on in-memory arrays, for tests (and benchmarks) to build
fixtures with and check the streamed jobs against: a prepared store of arrays, one layer file in
one call, every layer's embeddings of an array, normalised input, the paper's eval transform of
one PIL image and the training augmentation of one batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tunnelscope.data.loader import RATIO, SCALE, crop_batch, crop_plan
from tunnelscope.data.store import ImageStore, SplitPlan, byte_chunks, write_store
from tunnelscope.data.transforms import Normaliser
from tunnelscope.features.extract import embed_batches
from tunnelscope.features.store import EmbeddingWriter
from tunnelscope.io import atomic_path
from tunnelscope.models.points import ProbePoint
from tunnelscope.registry import DEFAULT_TRANSFORM, IMAGENET_MEAN, IMAGENET_STD


def write_arrays(
    out_dir: str | Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    resolution: int,
    name: str = "arrays",
) -> ImageStore:
    """A store of in-memory (images (N, h, w, 3) uint8, labels) per split, stored as they are."""
    plans = {}
    for split, (images, labels) in splits.items():
        shapes = np.tile(np.asarray(images.shape[1:3], dtype=np.int64), (len(images), 1))
        plans[split] = SplitPlan(
            np.asarray(labels, dtype=np.int64), shapes, lambda a, b, im=images: im[a:b], byte_chunks(shapes)
        )
    meta = {
        "dataset": name,
        "num_classes": int(num_classes),
        "resolution": int(resolution),
        "shorter_side": int(resolution),
        "native": True,
    }
    write_store(out_dir, meta, plans)
    return ImageStore(out_dir)


def write_embeddings(
    path, vectors: np.ndarray, labels: np.ndarray, splits: np.ndarray, sample_ids: np.ndarray, metadata: dict
) -> None:
    """One layer's embeddings in one call (see ``EmbeddingWriter``), written atomically."""
    with atomic_path(path) as tmp:
        writer = EmbeddingWriter(tmp, metadata)
        writer.append(vectors, labels, splits, sample_ids)
        writer.close()


def embed_images(
    model: torch.nn.Module,
    points: list[ProbePoint],
    images: np.ndarray,
    poolings=("avg2x2",),
    batch_size: int = 256,
    dtype=np.float16,
    device="cpu",
    **options,
) -> dict[tuple, np.ndarray]:
    """Embeddings of in-memory ``images`` (N, H, W, 3 uint8), {(index, pooling): (N, D)}: the
    reference the streamed embed job is checked against."""
    batches = (torch.from_numpy(images[i : i + batch_size]).to(device) for i in range(0, len(images), batch_size))
    parts: dict[tuple, list] = {}
    for vectors in embed_batches(model, points, batches, poolings, dtype, **options):
        for key, value in vectors.items():
            parts.setdefault(key, []).append(value)
    return {key: np.concatenate(value) for key, value in parts.items()}


def to_input(images_uint8: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> normalised float (N, 3, H, W), channels-last, freshly allocated."""
    return Normaliser(mean, std)(images_uint8.permute(0, 3, 1, 2))


def eval_transform(
    image: Image.Image,
    resolution: int,
    interpolation: str = DEFAULT_TRANSFORM["interpolation"],
    crop_pct: float = DEFAULT_TRANSFORM["crop_pct"],
    native: bool = False,
) -> np.ndarray:
    """The paper's eval transform up to normalisation: RGB, Resize(shorter side =
    int(R / crop_pct), bicubic), CenterCrop(R), with crop_pct = 224/256. Published models may
    name another interpolation and crop_pct. ``native``: an image whose shorter side is already
    R is only centre-cropped (CIFAR at 32 in the released CNN code). Normalisation happens on
    the device later."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    image = image.convert("RGB")
    if not (native and min(image.size) == resolution):
        image = TF.resize(image, int(resolution / crop_pct), interpolation=InterpolationMode(interpolation))
    return np.asarray(TF.center_crop(image, [resolution, resolution]), dtype=np.uint8)


def random_resized_crop_flip(
    canvas: torch.Tensor, sizes: torch.Tensor, size: int, generator: torch.Generator, scale=SCALE, ratio=RATIO
) -> torch.Tensor:
    """RandomResizedCrop(size) + HorizontalFlip(0.5) of a batch: ``canvas`` (n, H, W, 3) uint8
    holds image k in its top-left (h_k, w_k) = ``sizes[k]``; returns (n, 3, size, size) float
    in [0, 255], channels-last. The draws are ``crop_plan``'s, the resize ``crop_batch``'s."""
    boxes, flips = crop_plan(sizes[:, 0].cpu(), sizes[:, 1].cpu(), generator, scale, ratio)
    return crop_batch(canvas, boxes, flips, size).float()
