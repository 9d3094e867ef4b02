"""Pretraining's data step: a task's training images split into fit and hold-out rows, the readers
that feed them and their labels on the device."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from tunnelscope.data.loader import SplitReader, loader_workers
from tunnelscope.data.splits import stratified_split
from tunnelscope.data.store import ImageStore
from tunnelscope.runtime import JobRuntime

log = logging.getLogger("tunnelscope.train")


def task_view(task: dict | None, num_classes: int) -> tuple[int, int, int, slice]:
    """(first, stop, label offset, logit columns) of a continual-learning task's classes: with a
    shared head the softmax spans every class and labels stay as they are; with a head per task
    it spans the task's classes, labels counted from its first. No task: every class. (AdamW's
    decay still shrinks the other tasks' rows of the classifier, but uniformly, so the argmax
    over their own logits stays as it was.)"""
    if task is None:
        return 0, num_classes, 0, slice(None)
    first, stop = task["classes"]
    if stop > num_classes:
        raise ValueError(
            f"task {task['index']}: classes [{first}, {stop}) exceed the {num_classes} classes of the dataset"
        )
    if task["head"] == "per_task":
        return first, stop, first, slice(first, stop)
    return first, stop, 0, slice(None)


def task_rows(labels: np.ndarray, first: int, stop: int) -> np.ndarray:
    """Rows whose label is in [first, stop)."""
    return np.flatnonzero((labels >= first) & (labels < stop))


@dataclass
class TrainingData:
    """The data step's result: which rows fit, select and score, their readers and labels."""

    rows: np.ndarray  # the task's training images, hold-out included
    fit_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    fit: SplitReader
    train_eval: SplitReader
    test_eval: SplitReader
    labels: torch.Tensor  # every training image's, on the device, counted from the task's first class
    y_val: torch.Tensor
    y_test: torch.Tensor
    columns: slice  # the logits scored


def training_data(params: dict, store: ImageStore, device, runtime: JobRuntime, cell: str) -> TrainingData:
    """Split the task's training images into fit and hold-out rows, and open the readers."""
    cfg, seed, size = params["training"], params["seed"], params["resolution"]
    selection, augment = cfg["checkpoint"], params["augmentation"] == "rrc_flip"
    store.check_resolution(size)
    train, test = store.splits["train"], store.splits["test"]
    try:
        first, stop, offset, columns = task_view(params.get("task"), store.num_classes)
    except ValueError as exc:
        raise ValueError(f"cell {cell}: {exc}") from exc
    rows = task_rows(train.labels, first, stop)
    fit_idx, val_idx = (rows[i] for i in stratified_split(train.labels[rows], cfg["val_fraction"], seed, stream=7919))
    test_idx = task_rows(test.labels, first, stop)
    if selection != "last" and len({"best_val": val_idx, "best_test": test_idx}[selection]) == 0:
        split = (
            "held-out split (training.val_fraction holds out no image of any class)"
            if selection == "best_val"
            else "test split"
        )
        raise ValueError(f"cell {cell}: training.checkpoint {selection} selects on an empty {split}")
    # Data-loader processes when a split streams: as many as the device wants for training's
    # batches, at most one each for the (short) evaluation passes.
    workers, resident_mb = loader_workers(device, runtime.threads), runtime.resident_mb
    fit = SplitReader(train, "whole" if augment else "center", size, device, resident_mb, workers)
    train_eval = SplitReader(train, "center", size, device, resident_mb, min(workers, 1)) if augment else fit
    test_eval = SplitReader(test, "center", size, device, resident_mb, min(workers, 1))
    labels = torch.from_numpy(train.labels).to(device) - offset
    y_val = labels[torch.from_numpy(val_idx).to(device)]
    y_test = torch.from_numpy(test.labels[test_idx]).to(device) - offset
    where = {True: "on the device", False: "streamed"}
    log.info(
        "%s: %d train images (%s), %d test (%s)",
        cell,
        len(rows),
        where[fit.resident],
        len(test_idx),
        where[test_eval.resident],
    )
    return TrainingData(rows, fit_idx, val_idx, test_idx, fit, train_eval, test_eval, labels, y_val, y_test, columns)
