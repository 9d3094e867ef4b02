"""The embed stage: one eval set through one frozen backbone, one Parquet file per layer.

Batches of eval crops stream from the prepared store (or sit on the device for small sets); each
batch's pooled vectors go to a writer thread that appends them to every layer's file while the
next batch runs, so memory holds a batch or two, not the eval set. On a GPU the vectors reach the
host through pinned buffers without blocking, a batch behind the forward passes
(``extract.HostCopies``).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from tunnelscope.data.loader import SplitReader, loader_workers
from tunnelscope.data.splits import SPLITS
from tunnelscope.data.store import ImageStore
from tunnelscope.features.extract import embed_batches
from tunnelscope.features.store import EmbeddingWriter, layer_path, write_checksums
from tunnelscope.io import atomic_dir
from tunnelscope.joblog import progress_bar
from tunnelscope.models.build import probe_points
from tunnelscope.models.checkpoints import Backbone
from tunnelscope.runtime import JobRuntime, device_info, resolve_compute

log = logging.getLogger("tunnelscope.embed")


def embed_eval_set(
    params: dict,
    *,
    backbone: str | Backbone,
    store: str | ImageStore,
    out_dir: str,
    runtime: JobRuntime = JobRuntime(),
) -> None:
    """Embed one eval set of the prepared ``store`` (its path, or the store opened) through
    ``backbone`` (its checkpoint, or the backbone loaded from it) into ``out_dir``. ``params``
    may narrow it to a class range ``classes`` [first, stop) (labels counted from first) and to
    ``layers: last``. Its ``compute`` precision and channels_last (``auto`` when missing;
    ``runtime.channels_last`` overrides it) are resolved for the device and model, logged and
    recorded in every layer file's metadata."""
    device = runtime.start(params.get("compute"))  # the job's, set up by its script
    if not isinstance(backbone, Backbone):
        backbone = Backbone.load(backbone, device)
    model, compute = _ready_model(params, backbone.model, device, runtime)
    points = probe_points(model, params["side"], params["model"].get("probe_points", "default"))
    num_layers = len(points)
    if params.get("layers", "all") == "last":  # a score at the last layer needs no other
        points = points[-1:]
    # A trained cell's eval set: the study's normalisation of that set; a published model: its own.
    source = params["normalization"] or backbone.meta
    normalise = {k: tuple(source[k]) for k in ("mean", "std") if k in source}
    store = store if isinstance(store, ImageStore) else ImageStore(store)
    store.check_resolution(params["resolution"])
    # A class range [first, stop) (a continual-learning task): its images, labels from first.
    first, stop = params.get("classes") or (0, store.num_classes)
    rows = {s: np.flatnonzero((store.splits[s].labels >= first) & (store.splits[s].labels < stop)) for s in SPLITS}
    common = {
        "eval_set": params["eval_set"],
        "num_classes": stop - first,
        "class_names": (store.meta.get("class_names") or [])[first:stop] or None,  # where the source names them
        "num_layers": num_layers,
        "checkpoint": backbone.checkpoint,
        "checkpoint_sha256": backbone.checkpoint_sha256,
        **compute,
        **device_info(device),
    }
    poolings, dtype = params["pooling"], np.dtype(params["dtype"])
    total = sum(-(-len(rows[s]) // runtime.batch_size) for s in SPLITS)
    bar = progress_bar(total=total, desc=f"embed {params['eval_set']}", leave=False, mininterval=1.0)
    with atomic_dir(out_dir) as tmp, ThreadPoolExecutor(1) as writer_thread:
        writers = {
            (point.index, pooling): EmbeddingWriter(
                layer_path(tmp, pooling, point.index),
                {**common, "layer": point.index, "layer_name": point.name, "side": point.side, "pooling": pooling},
            )
            for pooling in poolings
            for point in points
        }
        batches = _embedded_batches(params, model, points, store, rows, device, runtime, compute, normalise)
        pending = None
        for split, ids, vectors in batches:
            if pending is not None:
                pending.result()  # one batch in flight: memory stays at two batches
            labels = store.splits[split].labels[ids] - first
            pending = writer_thread.submit(_append, writers, vectors, (labels, np.full(len(ids), split), ids))
            bar.update()
        if pending is not None:
            pending.result()
        for (index, pooling), writer in writers.items():
            writer.close()
            log.info("layer %3d %-10s dim %5d", index, pooling, writer.width // dtype.itemsize)
        write_checksums(tmp)
    bar.close()


def _ready_model(params: dict, model: torch.nn.Module, device, runtime: JobRuntime) -> tuple[torch.nn.Module, dict]:
    """The model in the resolved compute settings' memory format (turned channels_last in place
    where they say so), and those settings."""
    compute = resolve_compute(runtime.compute(params.get("compute")), device, model)
    log.info(
        "embed %s: %s, %s",
        params["eval_set"],
        compute["precision"],
        "channels_last (NHWC)" if compute["channels_last"] else "NCHW",
    )
    if compute["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return model, compute


def _embedded_batches(params, model, points, store: ImageStore, rows: dict, device, runtime, compute, normalise):
    """(split, row ids, {(layer, pooling): vectors}) of each batch: train then test, the rows of
    every layer file in this order."""
    for split in SPLITS:
        reader = SplitReader(
            store.splits[split],
            "center",
            params["resolution"],
            device,
            runtime.resident_mb,
            workers=loader_workers(device, runtime.threads),
        )
        start = 0
        for vectors in embed_batches(
            model,
            points,
            reader.batches(rows[split], runtime.batch_size),
            params["pooling"],
            np.dtype(params["dtype"]),
            compute["precision"],
            **normalise,
        ):
            n = len(next(iter(vectors.values())))
            yield split, rows[split][start : start + n], vectors
            start += n


def _append(writers: dict, vectors: dict, rows: tuple) -> None:
    for key, value in vectors.items():
        writers[key].append(value, *rows)
