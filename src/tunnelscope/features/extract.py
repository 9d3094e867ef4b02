"""Per-layer embeddings from ONE forward pass per image (hooks: ``models.capture``)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from tunnelscope.data.transforms import Normaliser
from tunnelscope.models.capture import LayerCapture
from tunnelscope.models.points import ProbePoint
from tunnelscope.registry import IMAGENET_MEAN, IMAGENET_STD
from tunnelscope.runtime import autocast


@torch.no_grad()
def embed_batches(
    model: torch.nn.Module,
    points: list[ProbePoint],
    batches,
    poolings=("avg2x2",),
    dtype=np.float16,
    precision: str = "fp32",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
):
    """For each batch of ``batches`` ((n, H, W, 3) uint8 tensors on the model's device), yield
    {(index, pooling): (n, D) array}: every probe point and pooling from one forward pass."""
    model.eval()
    device = next(model.parameters()).device
    to_model = Normaliser(mean, std)
    with LayerCapture(model, points, poolings) as capture:
        for images in batches:
            with autocast(device, precision):
                model(to_model(images.permute(0, 3, 1, 2)))
            yield {key: vectors.cpu().numpy().astype(dtype, copy=False) for key, vectors in capture.take().items()}


def embed_images(
    model: torch.nn.Module,
    points: list[ProbePoint],
    images: np.ndarray,
    poolings=("avg2x2",),
    batch_size: int = 256,
    dtype=np.float16,
    device="cpu",
    desc: str = "embed",
    **options,
) -> dict[tuple, np.ndarray]:
    """Embeddings of in-memory ``images`` (N, H, W, 3 uint8), {(index, pooling): (N, D)}: the
    reference the streamed embed job is checked against (and a helper for notebooks)."""
    batches = (
        torch.from_numpy(images[i : i + batch_size]).to(device)
        for i in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, mininterval=1.0)
    )
    parts: dict[tuple, list] = {}
    for vectors in embed_batches(model, points, batches, poolings, dtype, **options):
        for key, value in vectors.items():
            parts.setdefault(key, []).append(value)
    return {key: np.concatenate(value) for key, value in parts.items()}
