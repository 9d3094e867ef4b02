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

import contextlib
import logging
import math
import os

import numpy as np
import torch

from tunnelscope.data.store import StoreSplit
from tunnelscope.runtime import bound_heap

log = logging.getLogger("tunnelscope.data")

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
SHARED_MEMORY = "/dev/shm"
PREFETCH = 2  # batches a data-loader worker prepares ahead


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


def batched_crops(device) -> bool:
    """Whether ``crop_batch`` resizes a canvas's crops all at once on ``device``: on accelerators,
    where one launch per crop would keep the device waiting on Python (about 1,500 launches per
    batch of 256), not on CPUs, where the per-crop uint8 kernel is the fast one (and bitwise what
    runs have given so far)."""
    return torch.device(device).type != "cpu"


def crop_batch(
    images,
    boxes: np.ndarray,
    flips: np.ndarray,
    size: int,
    out: torch.Tensor | None = None,
    batched: bool | None = None,
) -> torch.Tensor:
    """Crop box k of image k ((h, w, 3) uint8 tensors, or rows of a canvas holding each image in
    its top-left corner), resize it to ``size`` as torchvision's RandomResizedCrop resizes tensors
    (bilinear, antialiased ``interpolate``) and flip it where ``flips`` says.

    Returns (n, 3, size, size) in [0, 255] with channels-last strides (as unaugmented batches have
    them, so convolutions take the same kernels either way): uint8 on CPUs, where that kernel is
    several times faster than on floats, float32 elsewhere. ``out`` may supply the result (and
    so the dtype the crops are resized in).
    ``batched`` (default: ``batched_crops`` of the device) resizes a canvas's crops in a few
    batched kernels (``resize_crops``, float32) instead of one ``interpolate`` per crop.
    """
    device = images[0].device if len(images) else torch.device("cpu")
    if batched is None:
        batched = batched_crops(device) and isinstance(images, torch.Tensor)
    if batched:
        if not isinstance(images, torch.Tensor):
            raise TypeError("batched crops are made from a canvas tensor (n, H, W, 3), not a list of images")
        return resize_crops(images, boxes, flips, size, out)
    dtype = out.dtype if out is not None else torch.uint8 if device.type == "cpu" else torch.float32
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


# Float32 canvas per chunk of ``resize_crops``: bounds its temporaries (about four times this) at
# a few dozen more launches a chunk; a batch of 256 photos at 224 px takes two.
CHUNK_BYTES = 256 * 2**20


def resize_crops(
    canvas: torch.Tensor, boxes: np.ndarray, flips: np.ndarray, size: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``crop_batch`` of a canvas (n, H, W, 3) in a few batched kernels: the antialiased bilinear
    resize is separable, so crop k is ``rows[k] @ image[k] @ columns[k].T`` with the (size x H)
    and (size x W) weights ``interpolate`` gives each output pixel (``resize_weights``), zero
    outside the box and mirrored for a flip: two batched products per chunk of images, in
    float32, whatever autocast is active (TF32 products, if a job turns them on, round the
    weights to 10 bits).

    Within 2e-4 (on the [0, 255] scale) of the float32 ``interpolate`` per crop; measured on
    the CPU: at most 7.6e-5 over 224-px crops of photo-sized canvases and 0 over 32-px crops of
    CIFAR batches (benchmarks/bench_crops.py). Returns (n, 3, size, size) float32, channels-last
    (or ``out``, filled).
    """
    n, height, width, _ = canvas.shape
    if out is None:
        out = torch.empty((n, size, size, 3), dtype=torch.float32, device=canvas.device).permute(0, 3, 1, 2)
    step = max(1, CHUNK_BYTES // (height * width * 3 * 4))
    with _without_autocast(canvas.device.type):
        for first in range(0, n, step):
            part = slice(first, first + step)
            k = len(boxes[part])
            # Both axes' spans in one copy, from pageable memory without a host sync (it is
            # staged at once), and their weights from one call.
            top, left, h, w = boxes[part].T
            spans = np.stack([np.r_[top, left], np.r_[h, w], np.r_[np.zeros(k, np.int64), flips[part]]], 1)
            start, length, flip = torch.from_numpy(spans).to(canvas.device, non_blocking=True).unbind(1)
            weights = resize_weights(start, length, flip.bool(), size, max(height, width))
            rows, columns = weights[:k, :, :height], weights[k:, :, :width]
            # (k, H, 3, W): each image one (H, 3W) matrix for the rows' product, then (3 size, W).
            images = canvas[part].permute(0, 1, 3, 2).to(torch.float32, memory_format=torch.contiguous_format)
            resized_rows = torch.bmm(rows, images.flatten(2))
            resized = torch.bmm(resized_rows.view(k, 3 * size, width), columns.transpose(1, 2))
            out[part] = resized.view(k, size, 3, size).transpose(1, 2)  # (k, 3, i, j)
    return out


def _without_autocast(device_type: str):
    """Autocast off for ``device_type`` (nothing to turn off where it has none: meta)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def resize_weights(
    start: torch.Tensor, length: torch.Tensor, flip: torch.Tensor, size: int, extent: int
) -> torch.Tensor:
    """(n, size, extent) float32 weights of the antialiased bilinear resize of span k
    [start_k, start_k + length_k) of an axis of ``extent`` pixels to ``size`` pixels, output
    pixels in reverse order where ``flip_k``: the weights torch's ``interpolate(mode="bilinear",
    antialias=True, align_corners=False)`` gives them. Output pixel i samples the span around its
    centre ``scale * (i + 0.5)`` (scale = length / size) with a triangle filter of half-width
    ``support`` = max(scale, 1), over torch's window of input pixels (its rounding included: a
    pixel on the window's edge, of weight 0 in exact arithmetic, gets about 1e-5 from float32
    rounding unless left out as torch leaves it out), each output's weights normalised to sum 1.
    The float32 operations are torch's, in its order; only the sums' order differs."""
    length = length.float()
    scale = length / size
    support = torch.where(scale >= 1, scale, 1.0)  # the filter widens only to shrink
    i = torch.arange(size, device=start.device, dtype=torch.float32)
    centre = scale[:, None] * (torch.where(flip[:, None], size - 1 - i, i) + 0.5)  # (n, size)
    first = (centre - support[:, None] + 0.5).trunc_().clamp_min_(0)[:, :, None]
    stop = torch.minimum((centre + support[:, None] + 0.5).trunc_(), length[:, None])[:, :, None]
    offset = (torch.arange(extent, device=start.device) - start[:, None]).float()[:, None, :]  # within the span
    weights = ((offset - centre[:, :, None]) + 0.5).mul_((1 / support)[:, None, None])
    weights = weights.abs_().neg_().add_(1).clamp_min_(0)
    weights *= (offset >= first) & (offset < stop)
    return weights / weights.sum(-1, keepdim=True)


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


def shared_memory_workers(workers: int, batch_bytes: int, path: str = SHARED_MEMORY) -> int:
    """How many of ``workers`` data-loader processes fit the free space of ``path`` (/dev/shm),
    where workers hand their batches over: ``PREFETCH`` batches of ``batch_bytes`` each, plus the
    one being copied out. Fewer when they do not fit (one line in the log); an error naming the
    bytes and the fix when not even one does. Torch's "file_system" sharing strategy would not
    help: both of its strategies place the batches in /dev/shm (``shm_open``). Nothing to check
    where there is no /dev/shm (macOS)."""
    if workers == 0:
        return 0
    try:
        stat = os.statvfs(path)
    except OSError:
        return workers
    free = stat.f_bavail * stat.f_frsize
    fit = max(0, (free // max(batch_bytes, 1) - 1) // PREFETCH)
    if fit >= workers:
        return workers
    need = (PREFETCH * workers + 1) * batch_bytes
    mb = 2**20
    if fit == 0:
        raise RuntimeError(
            f"{path} has {free / mb:.0f} MB free but one data-loader worker needs "
            f"{(PREFETCH + 1) * batch_bytes / mb:.0f} MB ({PREFETCH + 1} batches of {batch_bytes / mb:.0f} MB): give "
            f"it {math.ceil(need / 2**30)} GB (docker run --shm-size={math.ceil(need / 2**30)}g), keep the split on "
            "the device (compute.resident_mb, for images of one size) or give the job one thread (no workers: "
            "snakemake --set-threads RULE=1)"
        )
    log.warning(
        "%s has %.0f MB free, %d data-loader workers need %.0f MB: using %d",
        path,
        free / mb,
        workers,
        need / mb,
        fit,
    )
    return fit


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
        self._mode = "center" if view == "center" else "crops" if crop_in_workers else "canvas"
        self._items = _Chunks()
        self._loader = self._data_loader(workers)

    def _data_loader(self, workers: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            _Batches(self.split, self._mode, self.size),
            batch_size=None,
            sampler=self._items,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=PREFETCH if workers else None,
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
        if not self.resident and self._mode == "crops":
            yield from self._batches([(c, boxes, flips) for c, (boxes, flips) in zip(chunks, plans)])
            return
        for images, (boxes, flips) in zip(self._batches(chunks), plans):  # resident images or canvases
            yield crop_batch(images, boxes, flips, self.size)

    def _batches(self, items):
        if self.resident:
            for chunk in items:  # a pageable copy without a host sync: it is staged at once
                yield self._images[torch.from_numpy(chunk).to(self.device, non_blocking=True)]
            return
        workers = shared_memory_workers(self._loader.num_workers, self._largest_batch(items))
        if workers != self._loader.num_workers:
            self._loader = self._data_loader(workers)
        self._items.items = items
        for item in self._loader:
            yield item.to(self.device, non_blocking=True)

    def _largest_batch(self, items) -> int:
        """Bytes of the largest of these batches as workers hand them over: R x R crops, or a
        canvas as large as the batch's tallest and widest images."""
        chunks = [item[0] if isinstance(item, tuple) else item for item in items]
        if not chunks:
            return 0
        if self._mode != "canvas":
            return max(map(len, chunks)) * self.size * self.size * 3
        split = self.split
        return max(len(c) * int(split.heights[c].max()) * int(split.widths[c].max()) * 3 for c in chunks)
