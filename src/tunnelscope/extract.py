"""Per-layer embeddings from ONE forward pass per image.

Forward hooks on every probe point pool the captured map on the device right away, so only
the small pooled vectors leave the device and memory does not grow with the feature maps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .config import IMAGENET_MEAN, IMAGENET_STD
from .models import ProbePoint
from .train import Normaliser, autocast


POOLINGS = ("avg2x2", "avg1x1", "avg4x4", "token_mean", "cls")


def pool(t: torch.Tensor, pooling: str, prefix_tokens: int = 0) -> torch.Tensor:
    """Pool one captured tensor to a vector per sample.

    CNN maps (N, C, H, W): ``avgKxK`` = adaptive average to KxK then flatten (maps already at
    most KxK are flattened as they are, as in the paper); ``token_mean`` = global average.
    Token sequences (N, T, D): ``cls`` = the first (class) token; any other pooling = mean over
    the patch tokens (prefix tokens excluded).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; known: {', '.join(POOLINGS)}")
    if t.ndim == 4:
        if pooling == "cls":
            raise ValueError("pooling 'cls' needs a token sequence, got a feature map")
        k = 1 if pooling == "token_mean" else int(pooling[3])
        if t.shape[-2] <= k and t.shape[-1] <= k:
            return t.flatten(1)
        return F.adaptive_avg_pool2d(t, k).flatten(1)
    if t.ndim == 3:
        if pooling == "cls":
            if prefix_tokens < 1:
                raise ValueError("pooling 'cls' needs a model with a class token")
            return t[:, 0]
        return t[:, prefix_tokens:].mean(dim=1)
    if t.ndim == 2:
        return t
    raise ValueError(f"cannot pool a tensor of shape {tuple(t.shape)}")


class LayerCapture:
    """Context manager: hooks on the probe points collect pooled tensors of each forward.

    ``batch`` maps (probe index, pooling) to the pooled tensor; with ``poolings=()`` the raw
    tensors are kept instead (shape inspection).
    """

    def __init__(self, model: torch.nn.Module, points: list[ProbePoint], poolings=("avg2x2",)):
        self.model, self.points, self.poolings = model, points, tuple(poolings)
        self.batch: dict = {}
        self._calls: dict[str, int] = {}
        self._handles = []

    def __enter__(self):
        modules = dict(self.model.named_modules())
        by_module: dict[str, dict[tuple[str, int], ProbePoint]] = {}
        for point in self.points:
            for name in (point.name, point.post):
                if name and name not in modules:
                    raise KeyError(f"probe point {point.index}: {name!r} is not a module of the model")
            by_module.setdefault(point.name, {})[(point.side, point.call)] = point
        # One hook per module and side; a module that runs several times per forward (a
        # reused module) is captured at the call each probe point names.
        for name, wanted in by_module.items():
            module = modules[name]
            for side in {s for s, _ in wanted}:
                if side == "output":
                    hook = module.register_forward_hook(lambda m, args, out, n=name, w=wanted: self._on_call(n, w, "output", out))
                else:
                    hook = module.register_forward_pre_hook(lambda m, args, n=name, w=wanted: self._on_call(n, w, "input", args[0]))
                self._handles.append(hook)
        self._post = {p.post: modules[p.post] for p in self.points if p.post}
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _on_call(self, name: str, wanted: dict, side: str, tensor):
        key = (name, side)
        call = self._calls.get(key, 0)
        self._calls[key] = call + 1
        point = wanted.get((side, call))
        if point is not None:
            self._store(point, tensor)

    def _store(self, point: ProbePoint, tensor: torch.Tensor):
        if isinstance(tensor, (tuple, list)):
            tensor = tensor[0]
        tensor = tensor.detach()
        if point.post:
            tensor = self._post[point.post](tensor)
        if not self.poolings:
            self.batch[(point.index, None)] = tensor.clone()
        # Pool (and so copy) at once: a later in-place op cannot change what was captured.
        for pooling in self.poolings:
            self.batch[(point.index, pooling)] = pool(tensor, pooling, point.prefix_tokens).float()

    def take(self) -> dict:
        fired = {index for index, _ in self.batch}
        missing = [p.index for p in self.points if p.index not in fired]
        if missing:
            raise RuntimeError(f"probe points {missing} did not run in the forward pass")
        out, self.batch = self.batch, {}
        self._calls.clear()
        return out


@torch.no_grad()
def layer_shapes(model: torch.nn.Module, points: list[ProbePoint], resolution: int) -> dict[int, tuple]:
    """Per probe index, the captured tensor's shape for one image (no batch dim)."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with LayerCapture(model, points, poolings=()) as capture:
            model(torch.zeros(1, 3, resolution, resolution, device=device))
            return {index: tuple(t.shape[1:]) for (index, _), t in capture.take().items()}
    finally:
        model.train(was_training)


@torch.no_grad()
def embed_batches(model: torch.nn.Module, points: list[ProbePoint], batches, poolings=("avg2x2",), dtype=np.float16, precision: str = "fp32", mean=IMAGENET_MEAN, std=IMAGENET_STD):
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


def embed_images(model: torch.nn.Module, points: list[ProbePoint], images: np.ndarray, poolings=("avg2x2",), batch_size: int = 256, dtype=np.float16, device="cpu", desc: str = "embed", **options) -> dict[tuple, np.ndarray]:
    """Embeddings of in-memory ``images`` (N, H, W, 3 uint8), {(index, pooling): (N, D)}: the
    reference the streamed embed job is checked against (and a helper for notebooks)."""
    batches = (torch.from_numpy(images[i : i + batch_size]).to(device) for i in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, mininterval=1.0))
    parts: dict[tuple, list] = {}
    for vectors in embed_batches(model, points, batches, poolings, dtype, **options):
        for key, value in vectors.items():
            parts.setdefault(key, []).append(value)
    return {key: np.concatenate(value) for key, value in parts.items()}
