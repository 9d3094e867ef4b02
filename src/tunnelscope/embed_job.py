"""The embed stage: one eval set through one frozen backbone, one Parquet file per layer.

Batches of eval crops stream from the prepared store (or sit on the device for small sets); each
batch's pooled vectors go to a writer thread that appends them to every layer's file while the
next batch runs, so memory holds a batch or two, not the eval set.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from .datasets import SPLITS
from .extract import embed_batches
from .io import EmbeddingWriter, atomic_dir
from .loader import SplitReader, loader_workers
from .models import probe_points
from .store import Store
from .train import load_backbone, pick_device

log = logging.getLogger("tunnelscope.embed")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embed_eval_set(
    params: dict, checkpoint: str, data_path: str, out_dir: str, batch_size: int = 256, threads: int = 1, channels_last: bool = False, resident_mb: float = 1024
) -> None:
    torch.set_num_threads(max(1, threads))
    device = pick_device()
    model, meta = load_backbone(checkpoint, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    points = probe_points(model, params["side"], params["model"].get("probe_points", "default"))
    # A trained cell's eval set: the study's normalisation of that set; a published model: its own.
    source = params["normalization"] or meta
    normalise = {k: tuple(source[k]) for k in ("mean", "std") if k in source}
    store = Store(data_path)
    store.check_resolution(params["resolution"])
    common = {"eval_set": params["eval_set"], "num_classes": store.num_classes, "num_layers": len(points), "checkpoint": checkpoint, "checkpoint_sha256": file_sha256(checkpoint)}
    poolings, dtype = params["pooling"], np.dtype(params["dtype"])
    total = sum(-(-len(store.splits[s]) // batch_size) for s in SPLITS)
    bar = tqdm(total=total, desc=f"embed {params['eval_set']}", leave=False, mininterval=1.0)
    with atomic_dir(out_dir) as tmp, ThreadPoolExecutor(1) as writer_thread:
        writers = {
            (point.index, pooling): EmbeddingWriter(tmp / pooling / f"layer_{point.index:03d}.parquet", {**common, "layer": point.index, "layer_name": point.name, "side": point.side, "pooling": pooling})
            for pooling in poolings
            for point in points
        }
        pending = None
        for split in SPLITS:  # train then test: the rows of every layer file, in this order
            part = store.splits[split]
            reader = SplitReader(part, "center", params["resolution"], device, resident_mb, workers=loader_workers(device, threads))
            start = 0
            for vectors in embed_batches(model, points, reader.batches(np.arange(len(part)), batch_size), poolings, dtype, params["compute"]["precision"], **normalise):
                n = len(next(iter(vectors.values())))
                rows = (part.labels[start : start + n], np.full(n, split), np.arange(start, start + n))
                if pending is not None:
                    pending.result()  # one batch in flight: memory stays at two batches
                pending = writer_thread.submit(_append, writers, vectors, rows)
                start += n
                bar.update()
        if pending is not None:
            pending.result()
        for (index, pooling), writer in writers.items():
            writer.close()
            log.info("layer %3d %-10s dim %5d", index, pooling, writer.width // dtype.itemsize)
    bar.close()


def _append(writers: dict, vectors: dict, rows: tuple) -> None:
    for key, value in vectors.items():
        writers[key].append(value, *rows)
