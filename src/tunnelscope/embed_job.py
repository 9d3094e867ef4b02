"""The embed stage: one eval set through one frozen backbone, one Parquet file per layer."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch

from . import datasets
from .extract import embed_images
from .io import atomic_dir, write_embeddings
from .models import probe_points
from .train import load_backbone, pick_device

log = logging.getLogger("tunnelscope.embed")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embed_eval_set(params: dict, checkpoint: str, data_path: str, out_dir: str, batch_size: int = 256, threads: int = 1, channels_last: bool = False) -> None:
    torch.set_num_threads(max(1, threads))
    device = pick_device()
    model, meta = load_backbone(checkpoint, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    points = probe_points(model, params["side"], params["model"].get("probe_points", "default"))
    # A trained cell's eval set: the study's normalisation of that set; a published model: its own.
    source = params["normalization"] or meta
    normalise = {k: tuple(source[k]) for k in ("mean", "std") if k in source}
    data = datasets.load(data_path)
    # Train and test go through the model in one stream: one forward pass per image.
    images = np.concatenate([data.splits[s].images for s in datasets.SPLITS])
    labels = np.concatenate([data.splits[s].labels for s in datasets.SPLITS])
    split = np.concatenate([np.full(len(data.splits[s]), s) for s in datasets.SPLITS])
    sample_id = np.concatenate([np.arange(len(data.splits[s])) for s in datasets.SPLITS])
    poolings = params["pooling"]
    vectors = embed_images(
        model, points, images, poolings, batch_size, np.dtype(params["dtype"]), device, desc=f"embed {params['eval_set']}", precision=params["compute"]["precision"], **normalise
    )
    common = {
        "eval_set": params["eval_set"],
        "num_classes": data.num_classes,
        "num_layers": len(points),
        "checkpoint": checkpoint,
        "checkpoint_sha256": file_sha256(checkpoint),
    }
    with atomic_dir(out_dir) as tmp:
        for pooling in poolings:
            for point in points:
                meta = {**common, "layer": point.index, "layer_name": point.name, "side": point.side, "pooling": pooling}
                data_ = vectors[(point.index, pooling)]
                write_embeddings(tmp / pooling / f"layer_{point.index:03d}.parquet", data_, labels, split, sample_id, meta)
                log.info("layer %3d %-24s %-10s dim %5d", point.index, point.name, pooling, data_.shape[1])
