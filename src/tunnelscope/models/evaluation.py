"""A backbone's own classifier scored on a split of the prepared store: what training selects
checkpoints by and the continual-learning table reports."""

from __future__ import annotations

import numpy as np
import torch

from tunnelscope.data.loader import SplitReader
from tunnelscope.data.transforms import Normaliser
from tunnelscope.registry import IMAGENET_MEAN, IMAGENET_STD


@torch.no_grad()
def accuracy(
    model,
    reader: SplitReader,
    indices: np.ndarray,
    labels: torch.Tensor,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    batch_size: int = 512,
    columns: slice = slice(None),
) -> float:
    """Top-1 of ``model`` on the eval crops of ``indices`` of a split (``labels`` aligned), the
    argmax taken over the logits in ``columns`` (a task's classes; labels counted from its first)."""
    if len(indices) == 0:
        return float("nan")
    model.eval()
    correct, seen = torch.zeros((), dtype=torch.int64, device=labels.device), 0
    to_model = Normaliser(mean, std)
    for crops in reader.batches(indices, batch_size):
        logits = model(to_model(crops.permute(0, 3, 1, 2)))[:, columns]
        correct += (logits.argmax(1) == labels[seen : seen + len(crops)]).sum()  # counted on the device
        seen += len(crops)
    return correct.item() / len(indices)
