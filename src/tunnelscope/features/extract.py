"""Per-layer embeddings from ONE forward pass per image (hooks: ``models.capture``)."""

from __future__ import annotations

import numpy as np
import torch

from tunnelscope.data.transforms import Normaliser
from tunnelscope.models.capture import LayerCapture
from tunnelscope.models.points import ProbePoint
from tunnelscope.registry import IMAGENET_MEAN, IMAGENET_STD
from tunnelscope.runtime import autocast


class HostCopies:
    """Each batch's pooled vectors on their way to the host, as numpy arrays of ``dtype``.

    ``lag`` (CUDA): the batch's vectors, every layer and pooling, are cast and packed into one
    buffer on the device and copied into one pinned (page-locked) host buffer without blocking;
    a batch is handed over only when the next one's copy is queued, after the event ``record()``
    returned behind its own copy has completed: the host queues the next forward instead of
    waiting for each copy. The copy runs on the device's stream after the forward (pooled
    vectors: a small fraction of a forward's time). Without ``lag`` each vector is copied at
    once, as the CPU path always has (pinned memory needs CUDA).
    """

    def __init__(self, dtype, lag: bool = False, pin: bool = False, record=None):
        self.dtype = np.dtype(dtype)
        self.lag, self.pin, self.record = lag, pin, record
        self._host_dtype = torch.from_numpy(np.empty(0, self.dtype)).dtype
        self._pending = None

    @classmethod
    def for_device(cls, device: torch.device, dtype) -> HostCopies:
        """Lagged copies into pinned buffers on CUDA; immediate ones elsewhere (today's CPU path)."""
        if device.type != "cuda":
            return cls(dtype)
        return cls(dtype, lag=True, pin=True, record=lambda: _recorded_event(device))

    def push(self, vectors: dict) -> list[dict]:
        """Queue the copy of one batch's {key: tensor}; returns the batches now on the host
        ({key: (n, D) array}): this one without ``lag``, else the previous one, if any."""
        if not self.lag:
            return [{key: value.cpu().numpy().astype(self.dtype, copy=False) for key, value in vectors.items()}]
        packed = torch.cat([value.reshape(-1) for value in vectors.values()]).to(self._host_dtype)
        host = torch.empty(packed.shape, dtype=self._host_dtype, pin_memory=self.pin)
        host.copy_(packed, non_blocking=True)
        shapes = {key: value.shape for key, value in vectors.items()}
        done = self.record()
        ready = self.drain()
        self._pending = host, shapes, done
        return ready

    def drain(self) -> list[dict]:
        """The batch still being copied, once it is on the host ([] if none)."""
        if self._pending is None:
            return []
        (host, shapes, done), self._pending = self._pending, None
        done.synchronize()
        arrays, start = {}, 0
        for key, shape in shapes.items():  # views of the one buffer, which they keep alive
            arrays[key] = host[start : start + shape.numel()].view(shape).numpy()
            start += shape.numel()
        return [arrays]


def _recorded_event(device: torch.device):
    """A CUDA event recorded on ``device``'s current stream, where its copies were queued."""
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event


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
    copies: HostCopies | None = None,
):
    """For each batch of ``batches`` ((n, H, W, 3) uint8 tensors on the model's device), yield
    {(index, pooling): (n, D) array}: every probe point and pooling from one forward pass.
    ``copies`` (default: ``HostCopies.for_device``) brings the vectors to the host: on CUDA each
    batch is yielded once the next one's forward is queued."""
    model.eval()
    device = next(model.parameters()).device
    copies = HostCopies.for_device(device, dtype) if copies is None else copies
    to_model = Normaliser(mean, std)
    with LayerCapture(model, points, poolings) as capture:
        for images in batches:
            with autocast(device, precision):
                model(to_model(images.permute(0, 3, 1, 2)))
            yield from copies.push(capture.take())
    yield from copies.drain()
