"""Batches of a store's images on the training device, and the augmentation done there.

A split whose images share one size and fit ``resident_mb`` is read once and kept on the
device (CIFAR, the procedural sets). Any other streams from the store, image by image
(``os.preadv``, no whole-split read). For an accelerator, data-loader workers fill a pinned
canvas of whole images while it works on the previous batch; the canvas is copied without
blocking and cropped and resized there. For a CPU the batches are read and cropped in the job's
own process (``loader_workers``), or, if asked, in workers that ship R x R crops through shared
memory. Every path draws the same crops and resizes them with the same kernel on a given device,
so resident and streamed runs give the same numbers.

RandomResizedCrop follows torchvision's sampling on the *whole* stored image (area 8-100%,
log-uniform aspect 3/4-4/3, 10 tries, then its centre fallback), with this job's seeded
generator instead of torch's global one; each crop is then resized to R as torchvision resizes
tensors (bilinear, antialiased) and flipped.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tunnelscope.data.store import StoreSplit
from tunnelscope.runtime import bound_heap

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


def rrc_boxes(
    heights: torch.Tensor, widths: torch.Tensor, generator: torch.Generator, scale=SCALE, ratio=RATIO, tries: int = 10
) -> torch.Tensor:
    """(n, 4) integer crop boxes (top, left, height, width), one per image of the given sizes,
    drawn as torchvision's ``RandomResizedCrop.get_params`` draws them, all images at once."""
    h, w = heights.double(), widths.double()
    n = len(h)
    area = (h * w)[:, None]
    target = area * torch.empty(n, tries, dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    aspect = torch.exp(
        torch.empty(n, tries, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    )
    cw = torch.round(torch.sqrt(target * aspect))
    ch = torch.round(torch.sqrt(target / aspect))
    ok = (cw > 0) & (cw <= w[:, None]) & (ch > 0) & (ch <= h[:, None])
    first = ok.double().argmax(1)
    rows = torch.arange(n)
    found = ok.any(1)
    cw, ch = cw[rows, first], ch[rows, first]
    # torchvision's fallback: the whole image, cut to the nearest allowed aspect ratio, centred.
    in_ratio = w / h
    fb_w = torch.where(in_ratio < ratio[0], w, torch.where(in_ratio > ratio[1], torch.round(h * ratio[1]), w))
    fb_h = torch.where(in_ratio < ratio[0], torch.round(w / ratio[0]), torch.where(in_ratio > ratio[1], h, h))
    cw, ch = torch.where(found, cw, fb_w), torch.where(found, ch, fb_h)
    top = torch.floor(torch.rand(n, generator=generator, dtype=torch.float64) * (h - ch + 1))
    left = torch.floor(torch.rand(n, generator=generator, dtype=torch.float64) * (w - cw + 1))
    top = torch.where(found, top, torch.floor((h - ch) / 2))
    left = torch.where(found, left, torch.floor((w - cw) / 2))
    return torch.stack([top, left, ch, cw], 1).long()


def crop_plan(heights, widths, generator: torch.Generator, scale=SCALE, ratio=RATIO) -> tuple[np.ndarray, np.ndarray]:
    """RandomResizedCrop + HorizontalFlip(0.5) draws for a batch of images of the given sizes:
    (n, 4) boxes (top, left, height, width) and (n,) flips, in the order every path draws them."""
    boxes = rrc_boxes(torch.as_tensor(heights), torch.as_tensor(widths), generator, scale, ratio)
    flips = torch.rand(len(boxes), generator=generator) < 0.5
    return boxes.numpy(), flips.numpy()


def crop_batch(
    images, boxes: np.ndarray, flips: np.ndarray, size: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Crop box k of image k ((h, w, 3) uint8 tensors, or rows of a canvas holding each image in
    its top-left corner), resize it to ``size`` as torchvision's RandomResizedCrop resizes tensors
    (bilinear, antialiased ``interpolate``) and flip it where ``flips`` says.

    Returns (n, 3, size, size) in [0, 255] with channels-last strides (as unaugmented batches have
    them, so convolutions take the same kernels either way): uint8 on CPUs, where that kernel is
    several times faster than on floats, float32 elsewhere. ``out`` may supply the uint8 result.
    """
    device = images[0].device if len(images) else torch.device("cpu")
    dtype = torch.uint8 if device.type == "cpu" else torch.float32
    if out is None:
        out = torch.empty((len(boxes), size, size, 3), dtype=dtype, device=device).permute(0, 3, 1, 2)
    for k, ((top, left, h, w), flip) in enumerate(zip(boxes.tolist(), flips.tolist())):
        # A dense channels-last crop: the uint8 kernel's fast path (2x a strided view, measured).
        crop = (
            images[k][top : top + h, left : left + w]
            .permute(2, 0, 1)[None]
            .to(dtype)
            .contiguous(memory_format=torch.channels_last)
        )
        resized = torch.nn.functional.interpolate(
            crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )[0]
        out[k] = resized.flip(-1) if flip else resized
    return out


def random_resized_crop_flip(
    canvas: torch.Tensor, sizes: torch.Tensor, size: int, generator: torch.Generator, scale=SCALE, ratio=RATIO
) -> torch.Tensor:
    """RandomResizedCrop(size) + HorizontalFlip(0.5) of a batch: ``canvas`` (n, H, W, 3) uint8
    holds image k in its top-left (h_k, w_k) = ``sizes[k]``; returns (n, 3, size, size) float
    in [0, 255], channels-last. The draws are ``crop_plan``'s, the resize ``crop_batch``'s."""
    boxes, flips = crop_plan(sizes[:, 0].cpu(), sizes[:, 1].cpu(), generator, scale, ratio)
    return crop_batch(canvas, boxes, flips, size).float()


def center_crop(images, size: int, axes: int = 0):
    """The eval view of stored images: the centre size x size crop (torchvision's rounding) of
    the (h, w) axes starting at ``axes`` (0: one (h, w, 3) image; 1: an (n, h, w, 3) batch)."""
    h, w = images.shape[axes : axes + 2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return images[(slice(None),) * axes + (slice(top, top + size), slice(left, left + size))]


def loader_workers(device, threads: int) -> int:
    """Data-loader processes for a job of ``threads`` cores streaming a split to ``device``: the
    cores left beside the job's own process on an accelerator; none on a CPU, where the batches
    are read and cropped between steps, since worker processes take cores from the model's
    threads (at 224 px on 2 cores: 0.66x a bare loop with one worker, 0.88x without;
    benchmarks/RESULTS.md)."""
    return max(0, threads - 1) if torch.device(device).type != "cpu" else 0


class _Batches(torch.utils.data.Dataset):
    """Item = the images at an array of indices, as the reader's mode wants them:
    "center": the (n, R, R, 3) eval crops; "canvas": a uint8 canvas (n, H, W, 3) with each image
    in its top-left corner; "crops": for an item (indices, boxes, flips),
    ``crop_batch``'s (n, 3, R, R) uint8 crops, made here in the worker."""

    def __init__(self, split: StoreSplit, mode: str, size: int):
        self.split, self.mode, self.size = split, mode, size

    def __getitem__(self, item):
        if self.mode == "crops":
            indices, boxes, flips = item
            # Only the rows each crop covers are read (on average 3/4 of the image's).
            images = [
                torch.from_numpy(self.split.image(int(i), int(top), int(h)))
                for i, (top, _, h, _) in zip(indices, boxes)
            ]
            rows = boxes.copy()
            rows[:, 0] = 0
            out = torch.empty((len(indices), self.size, self.size, 3), dtype=torch.uint8)
            if torch.utils.data.get_worker_info() is not None:
                out.share_memory_()  # written in place where the batch is handed over, not copied there
            return crop_batch(images, rows, flips, self.size, out.permute(0, 3, 1, 2))
        images = [self.split.image(int(i)) for i in item]
        if self.mode == "center":
            return torch.from_numpy(np.stack([center_crop(im, self.size) for im in images]))
        sizes = np.array([im.shape[:2] for im in images], dtype=np.int64)
        canvas = np.zeros((len(images), *sizes.max(0), 3), dtype=np.uint8)  # crops never reach the padding
        for k, (im, (h, w)) in enumerate(zip(images, sizes)):
            canvas[k, :h, :w] = im
        return torch.from_numpy(canvas)


def _init_worker(_: int) -> None:
    # Workers allocate batches of varying size (canvases): keep them off a fragmenting heap. Not
    # in the training process, where a mapping per large tensor costs page faults on every step
    # (40% of a CPU training run's time, measured).
    bound_heap()


class _Chunks(torch.utils.data.Sampler):
    """The current epoch's items; it lives in this process, so persistent workers read
    whatever the next epoch sets."""

    def __init__(self):
        self.items: list = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class SplitReader:
    """Batches of one split on ``device``, resident there or streamed from the store.

    ``view`` "center": (n, R, R, 3) uint8 eval crops; "whole": RandomResizedCrop + flip of the
    whole images, (n, 3, R, R) channels-last in [0, 255] (``crop_batch``), drawn from the
    generator passed to ``batches``. ``workers`` data-loader processes prefetch streamed batches
    (0: read in this process). Streamed to a CPU, the crops are made where the images are read
    (R x R crops cross the process boundary); streamed to an accelerator, whole images are sent
    and it crops them (``crop_in_workers`` overrides that choice)."""

    def __init__(
        self,
        split: StoreSplit,
        view: str,
        size: int,
        device,
        resident_mb: float,
        workers: int = 1,
        crop_in_workers: bool | None = None,
    ):
        self.split, self.view, self.size, self.device = split, view, size, torch.device(device)
        shape = split.uniform_shape
        self.resident = shape is not None and split.nbytes <= resident_mb * 2**20
        if self.resident:
            images = torch.from_numpy(split.array()).to(self.device)
            self._images = center_crop(images, size, axes=1).contiguous() if view == "center" else images
            return
        if crop_in_workers is None:
            crop_in_workers = self.device.type == "cpu"
        mode = "center" if view == "center" else "crops" if crop_in_workers else "canvas"
        self._items = _Chunks()
        self._loader = torch.utils.data.DataLoader(
            _Batches(split, mode, size),
            batch_size=None,
            sampler=self._items,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers else None,
            worker_init_fn=_init_worker,
        )

    def __len__(self) -> int:
        return len(self.split)

    def batches(self, order, batch_size: int, generator: torch.Generator | None = None):
        """Yield the batches of ``order`` (indices into the split, an array or tensor) on the
        device; the "whole" view draws every crop of the pass from ``generator`` first."""
        order = np.asarray(order.cpu() if isinstance(order, torch.Tensor) else order, dtype=np.int64)
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if self.view == "center":
            yield from self._batches(chunks)
            return
        if generator is None:
            raise ValueError("the whole-image view draws its crops from a generator: pass one")
        plans = [crop_plan(self.split.heights[c], self.split.widths[c], generator) for c in chunks]
        if not self.resident and self._loader.dataset.mode == "crops":
            yield from self._batches([(c, boxes, flips) for c, (boxes, flips) in zip(chunks, plans)])
            return
        for images, (boxes, flips) in zip(self._batches(chunks), plans):  # resident images or canvases
            yield crop_batch(images, boxes, flips, self.size)

    def _batches(self, items):
        if self.resident:
            for chunk in items:
                yield self._images[torch.from_numpy(chunk).to(self.device)]
            return
        self._items.items = items
        for item in self._loader:
            yield item.to(self.device, non_blocking=True)
