"""Per-layer embeddings from ONE forward pass per image.

Forward hooks on every probe point pool the captured map on the device right away, so only
the small pooled vectors leave the device and memory does not grow with the feature maps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .models import ProbePoint
from .train import to_input


def pool(t: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool one captured tensor to a vector per sample.

    CNN maps (N, C, H, W): ``avg2x2`` = adaptive average to 2x2 then flatten (maps already at
    most 2x2 are flattened as they are, as in the paper); ``avg1x1`` = global average.
    Token sequences (N, T, D): mean over tokens.
    """
    if t.ndim == 4:
        if pooling == "avg1x1":
            return t.mean(dim=(2, 3))
        if pooling == "avg2x2":
            if t.shape[-2] <= 2 and t.shape[-1] <= 2:
                return t.flatten(1)
            return F.adaptive_avg_pool2d(t, 2).flatten(1)
        raise ValueError(f"unknown pooling {pooling!r}")
    if t.ndim == 3:
        return t.mean(dim=1)
    if t.ndim == 2:
        return t
    raise ValueError(f"cannot pool a tensor of shape {tuple(t.shape)}")


class LayerCapture:
    """Context manager: hooks on the probe points collect pooled tensors of each forward."""

    def __init__(self, model: torch.nn.Module, points: list[ProbePoint], pooling: str):
        self.model, self.points, self.pooling = model, points, pooling
        self.batch: dict[int, torch.Tensor] = {}
        self._handles = []

    def __enter__(self):
        modules = dict(self.model.named_modules())
        for point in self.points:
            if point.name not in modules:
                raise KeyError(f"probe point {point.name!r} is not a module of the model")
            module = modules[point.name]
            if point.side == "output":
                hook = module.register_forward_hook(self._output_hook(point.index))
            else:
                hook = module.register_forward_pre_hook(self._input_hook(point.index))
            self._handles.append(hook)
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _store(self, index: int, tensor: torch.Tensor):
        if index in self.batch:
            raise RuntimeError(f"probe point {index} fired twice in one forward pass (a reused module)")
        # Pool (and so copy) at once: a later in-place op cannot change what was captured.
        self.batch[index] = pool(tensor.detach(), self.pooling).float()

    def _output_hook(self, index):
        return lambda module, args, output: self._store(index, output)

    def _input_hook(self, index):
        return lambda module, args: self._store(index, args[0])

    def take(self) -> dict[int, torch.Tensor]:
        missing = [p.index for p in self.points if p.index not in self.batch]
        if missing:
            raise RuntimeError(f"probe points {missing} did not fire in the forward pass")
        out, self.batch = self.batch, {}
        return out


@torch.no_grad()
def embed_images(
    model: torch.nn.Module,
    points: list[ProbePoint],
    images: np.ndarray,
    pooling: str = "avg2x2",
    batch_size: int = 256,
    dtype=np.float16,
    device: torch.device | str = "cpu",
    desc: str = "embed",
) -> dict[int, np.ndarray]:
    """Embeddings of ``images`` (N, H, W, 3 uint8) at every probe point: {index: (N, D)}."""
    model.eval()
    out: dict[int, np.ndarray] = {}
    with LayerCapture(model, points, pooling) as capture:
        for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, mininterval=1.0):
            x = to_input(torch.from_numpy(images[start : start + batch_size]).to(device))
            model(x)
            for index, vectors in capture.take().items():
                if index not in out:
                    out[index] = np.empty((len(images), vectors.shape[1]), dtype=dtype)
                out[index][start : start + len(x)] = vectors.cpu().numpy()
    return out
