"""Seeded splits and epoch orders, shared by training, the probes and the zero-shot protocol."""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "test")


def stratified_split(labels: np.ndarray, fraction: float, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split of indices into sorted (kept, held out).

    ``round(fraction * n)`` of each class is held out, but every class keeps at least one
    sample. ``stream`` separates the random streams of the different splits made from one seed
    (dataset test split, pretraining validation, probe validation).
    """
    rng = np.random.default_rng([seed, stream])
    kept, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(idx) - 1, int(round(fraction * len(idx))))
        held.append(idx[:k])
        kept.append(idx[k:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def epoch_order(n: int, repeats: int, generator):
    """Indices of one epoch: a seeded permutation (torch ``generator``); with ``repeats`` k > 1,
    the first n / k of it, each index k times in a row: DeiT's repeated-augmentation sampler on
    one device (its copies land in the same batch, where training augments each on its own)."""
    import torch

    order = torch.randperm(n, generator=generator)
    return order if repeats == 1 else order.repeat_interleave(repeats)[:n]
