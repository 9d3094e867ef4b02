"""Batches of a store's images on the training device, and the augmentation done there.

A split whose images share one size and fit ``resident_mb`` is read once and kept on the
device (CIFAR, the procedural sets). Any other streams: data-loader workers read each batch's
images from the store (``os.pread``, no whole-split read) into a pinned uint8 canvas, copied to
the device without blocking while the next batches are read. Both paths hand the same canvases
to the same device-side augmentation, so they give the same numbers.

RandomResizedCrop follows torchvision's sampling on the *whole* stored image (area 8-100%,
log-uniform aspect 3/4-4/3, 10 tries, then its centre fallback), with this job's seeded
generator instead of torch's global one; the crops of a batch are then resized to R together by
``torchvision.ops.roi_align`` (which averages several samples per output pixel when shrinking,
an antialiased resize) and flipped, on the device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .store import StoreSplit

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


def rrc_boxes(heights: torch.Tensor, widths: torch.Tensor, generator: torch.Generator, scale=SCALE, ratio=RATIO, tries: int = 10) -> torch.Tensor:
    """(n, 4) integer crop boxes (top, left, height, width), one per image of the given sizes,
    drawn as torchvision's ``RandomResizedCrop.get_params`` draws them, all images at once."""
    h, w = heights.double(), widths.double()
    n = len(h)
    area = (h * w)[:, None]
    target = area * torch.empty(n, tries, dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    aspect = torch.exp(torch.empty(n, tries, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
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


def random_resized_crop_flip(canvas: torch.Tensor, sizes: torch.Tensor, size: int, generator: torch.Generator, scale=SCALE, ratio=RATIO, chunk: int = 64) -> torch.Tensor:
    """RandomResizedCrop(size) + HorizontalFlip(0.5) of a batch: ``canvas`` (n, H, W, 3) uint8
    holds image k in its top-left (h_k, w_k) = ``sizes[k]`` (edges replicated beyond it);
    returns (n, 3, size, size) float in [0, 255] on the canvas's device. Crops and flips are
    drawn for the whole batch first, then resized ``chunk`` images at a time, which bounds the
    float copy of the canvas."""
    from torchvision.ops import roi_align

    boxes = rrc_boxes(sizes[:, 0], sizes[:, 1], generator, scale, ratio).double()
    flip = (torch.rand(len(boxes), generator=generator) < 0.5).to(canvas.device)
    top, left, h, w = boxes.unbind(1)
    out = []
    for start in range(0, len(boxes), chunk):
        part = canvas[start : start + chunk].permute(0, 3, 1, 2).float()
        k = slice(start, start + len(part))
        rois = torch.stack([torch.arange(len(part), dtype=torch.float64), left[k], top[k], left[k] + w[k], top[k] + h[k]], 1)
        out.append(roi_align(part, rois.to(part), output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True))
    out = torch.cat(out)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The eval view of a stored image: its centre size x size crop (torchvision's rounding)."""
    h, w = image.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image[top : top + size, left : left + size]


class _Batches(torch.utils.data.Dataset):
    """Item = the images at an array of indices: a uint8 canvas (n, H, W, 3) with each image in
    its top-left corner and the sizes (n, 2); or, for ``view`` "center", the (n, R, R, 3) crops."""

    def __init__(self, split: StoreSplit, view: str, size: int):
        self.split, self.view, self.size = split, view, size

    def __getitem__(self, indices: np.ndarray):
        images = [self.split.image(int(i)) for i in indices]
        if self.view == "center":
            return torch.from_numpy(np.stack([center_crop(im, self.size) for im in images]))
        sizes = np.array([im.shape[:2] for im in images], dtype=np.int64)
        canvas = np.empty((len(images), *sizes.max(0), 3), dtype=np.uint8)
        for k, (im, (h, w)) in enumerate(zip(images, sizes)):
            # Edges replicated into the padding: bilinear samples at an image's last row or
            # column then read only that image, as they do in an unpadded (resident) batch.
            canvas[k, :h, :w] = im
            canvas[k, :h, w:] = im[:, -1:]
            canvas[k, h:] = canvas[k, h - 1 : h]
        return torch.from_numpy(canvas), torch.from_numpy(sizes)


class _Chunks(torch.utils.data.Sampler):
    """The current epoch's index chunks; it lives in this process, so persistent workers read
    whatever order the next epoch sets."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []

    def __iter__(self):
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


class SplitReader:
    """Batches of one split on ``device``, resident there or streamed from the store.

    ``view`` "whole": (canvas (n, H, W, 3) uint8, sizes (n, 2)) for the augmentation above;
    "center": (n, R, R, 3) uint8 eval crops. ``workers`` data-loader processes prefetch streamed
    batches (0: read in this process)."""

    def __init__(self, split: StoreSplit, view: str, size: int, device, resident_mb: float, workers: int = 1):
        self.split, self.view, self.size, self.device = split, view, size, torch.device(device)
        shape = split.uniform_shape
        self.resident = shape is not None and split.nbytes <= resident_mb * 2**20
        if self.resident:
            images = torch.from_numpy(split.array()).to(self.device)
            if view == "center":
                h, w = shape
                top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
                images = images[:, top : top + size, left : left + size].contiguous()
            self._images = images
            self._sizes = torch.tensor(shape, dtype=torch.long).expand(len(split), 2)
            return
        self._chunks = _Chunks()
        self._loader = torch.utils.data.DataLoader(
            _Batches(split, view, size),
            batch_size=None,
            sampler=self._chunks,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None,
        )

    def __len__(self) -> int:
        return len(self.split)

    def batches(self, order, batch_size: int):
        """Yield the batches of ``order`` (indices into the split, an array or tensor) on the device."""
        order = np.asarray(order.cpu() if isinstance(order, torch.Tensor) else order, dtype=np.int64)
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if self.resident:
            for chunk in chunks:
                idx = torch.from_numpy(chunk).to(self.device)
                yield self._images[idx] if self.view == "center" else (self._images[idx], self._sizes[chunk])
            return
        self._chunks.chunks = chunks
        for item in self._loader:
            if self.view == "center":
                yield item.to(self.device, non_blocking=True)
            else:
                canvas, sizes = item
                yield canvas.to(self.device, non_blocking=True), sizes
