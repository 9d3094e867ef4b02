"""Atomic file writes and the Parquet embedding format."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A killed job therefore never leaves a file under the final name that a later job could
    take for complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Like ``atomic_path`` for a directory: filled under a temporary name, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            path.rmdir()  # Snakemake may pre-create an empty output directory.
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_table(df: pd.DataFrame, parquet: str, csv: str | None = None) -> None:
    with atomic_path(parquet) as tmp:
        df.to_parquet(tmp, index=False)
    if csv:
        with atomic_path(csv) as tmp:
            df.to_csv(tmp, index=False)


def read_table(path: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, pa.ArrowException) as exc:
        raise RuntimeError(f"{path}: not a readable Parquet table ({exc})") from exc


def write_embeddings(path, vectors: np.ndarray, labels: np.ndarray, splits: np.ndarray, sample_ids: np.ndarray, metadata: dict) -> None:
    """One layer's embeddings: columns sample_id, split, label, embedding (fixed-size list)."""
    n, dim = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors).reshape(-1))
    table = pa.table(
        {
            "sample_id": pa.array(sample_ids, pa.int64()),
            "split": pa.array(splits).dictionary_encode(),
            "label": pa.array(labels, pa.int32()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        }
    )
    meta = {b"tunnelscope": json.dumps({**metadata, "dim": int(dim), "dtype": str(vectors.dtype)}, sort_keys=True).encode()}
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _fixed_size_list_to_numpy(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """(N, dim) float32 straight from the Arrow value buffers.

    Written by hand because pyarrow's to_numpy() on half floats builds Python objects (tens of
    times slower than reading the file); the buffers are plain IEEE halves or floats.
    """
    parts = []
    for chunk in column.chunks:
        values = chunk.flatten()  # honours the chunk's offset
        dtype = np.float16 if values.type == pa.float16() else np.float32
        buf = np.frombuffer(values.buffers()[1], dtype=dtype, count=values.offset + len(values))[values.offset :]
        parts.append(buf.reshape(-1, dim))
    out = np.empty((sum(len(p) for p in parts), dim), dtype=np.float32)
    row = 0
    for part in parts:
        out[row : row + len(part)] = part
        row += len(part)
    return out


def read_embeddings(path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Return (metadata, vectors float32 (N, D), labels (N,), splits (N,) str)."""
    try:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[b"tunnelscope"])
    except (OSError, pa.ArrowException, KeyError, TypeError) as exc:
        raise RuntimeError(f"{path}: not a readable tunnelscope embedding file ({exc})") from exc
    vectors = _fixed_size_list_to_numpy(table.column("embedding"), meta["dim"])
    labels = table.column("label").to_numpy()
    splits = np.asarray(table.column("split").combine_chunks().cast(pa.string()).to_numpy(zero_copy_only=False))
    return meta, vectors, labels, splits


def write_json(obj, path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
