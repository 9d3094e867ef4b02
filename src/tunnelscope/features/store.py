"""The embeddings store, sole owner of its layout: ``EMBED_DIR/POOLING/layer_NNN.parquet``.

One Parquet file per layer: ``sample_id``, ``split`` (dictionary train/test), ``label`` and
the vector as a fixed-size binary column; the file metadata names the layer, pooling, dims,
dtype and the checkpoint it came from. Readable by pandas, polars and duckdb (docs/outputs.md).

Damage is caught twice over: every page carries a CRC-32 (Parquet page checksums, checked on
read), and ``EMBED_DIR/checksums.json`` holds each layer file's CRC-32, checked before a file is
read: page checksums leave the footer (schema, metadata) uncovered, where a changed byte can
rename a column or change a recorded fact unnoticed.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tunnelscope.integrity import check_file_crc32, damaged, file_crc32, relative
from tunnelscope.io import atomic_path

# Vectors sit in one fixed-size binary column: Parquet stores a list<float16> column with a
# repetition and a definition level per element, and pyarrow decodes those 46-56x slower than
# np.load reads the same array; the binary column reads at 1.6-1.9x (256-2,048 dims,
# benchmarks/RESULTS.md, "Embedding storage").
_VECTOR_DTYPES = {"float16": "<f2", "float32": "<f4"}
_ROW_GROUP_BYTES = 8 << 20  # several row groups per file, so readers decode them in parallel


CHECKSUMS = "checksums.json"  # in an embeddings directory: {"POOLING/layer_NNN.parquet": CRC-32}
SPLIT_NAMES = pa.array(["train", "test"])  # the split column's dictionary, the same in every row group


class EmbeddingWriter:
    """One layer's embeddings written batch by batch: columns sample_id, split, label, embedding.

    ``embedding`` is fixed_size_binary(dim x itemsize): the vector as little-endian IEEE floats of
    the ``dtype`` named in the file metadata. Outside tunnelscope, decode a column with
    ``np.frombuffer(b"".join(col.to_pylist()), "<f2").reshape(-1, dim)``. Rows are written in
    row groups of a fixed size whatever the batches, so a file does not depend on how its rows
    arrived. The file is opened at the first batch (when the dimension is known).
    """

    def __init__(self, path, metadata: dict):
        self.path, self.metadata = Path(path), metadata
        self._writer, self._pending, self._rows = None, [], 0

    def append(self, vectors: np.ndarray, labels: np.ndarray, splits: np.ndarray, sample_ids: np.ndarray) -> None:
        dtype = str(vectors.dtype)
        if dtype not in _VECTOR_DTYPES:
            raise ValueError(f"embeddings must be float16 or float32, got {dtype}")
        if self._writer is None:
            self._open(vectors.shape[1], dtype)
        self._pending.append((np.ascontiguousarray(vectors, dtype=_VECTOR_DTYPES[dtype]), labels, splits, sample_ids))
        self._rows += len(vectors)
        while self._rows >= self._group:
            self._flush(self._group)

    def close(self) -> None:
        if self._writer is None:
            raise ValueError(f"{self.path}: no embeddings were written")
        while self._rows:
            self._flush(min(self._rows, self._group))
        self._writer.close()

    def _open(self, dim: int, dtype: str) -> None:
        self.width = dim * np.dtype(_VECTOR_DTYPES[dtype]).itemsize
        self._group = max(1024, _ROW_GROUP_BYTES // self.width)
        schema = pa.schema(
            [
                ("sample_id", pa.int64()),
                ("split", pa.dictionary(pa.int32(), pa.string())),
                ("label", pa.int32()),
                ("embedding", pa.binary(self.width)),
            ],
            metadata={
                b"tunnelscope": json.dumps({**self.metadata, "dim": int(dim), "dtype": dtype}, sort_keys=True).encode()
            },
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(
            self.path,
            schema,
            # lz4 keeps files at ~0.8 of the raw bytes and decompresses at memory speed; zstd
            # packs ReLU features to ~0.6 but reads 2x slower.
            compression={"sample_id": "zstd", "split": "zstd", "label": "zstd", "embedding": "lz4"},
            use_dictionary=["split"],
            write_statistics=["sample_id", "label"],
            write_page_checksum=True,
        )
        self._schema = schema

    def _flush(self, n: int) -> None:
        """Write the first ``n`` pending rows as one row group."""
        parts = [np.concatenate(column) for column in zip(*self._pending)]
        vectors, labels, splits, ids = (p[:n] for p in parts)
        self._pending = [tuple(p[n:] for p in parts)] if len(parts[0]) > n else []
        self._rows -= n
        codes = pa.array((np.asarray(splits) == "test").astype(np.int32))
        table = pa.table(
            {
                "sample_id": pa.array(ids, pa.int64()),
                "split": pa.DictionaryArray.from_arrays(codes, SPLIT_NAMES),
                "label": pa.array(labels, pa.int32()),
                "embedding": pa.FixedSizeBinaryArray.from_buffers(
                    pa.binary(self.width), n, [None, pa.py_buffer(np.ascontiguousarray(vectors))]
                ),
            },
            schema=self._schema,
        )
        self._writer.write_table(table, row_group_size=n)


def _vectors(column: pa.ChunkedArray, dim: int, dtype: str) -> np.ndarray:
    """(n, dim) view of an embedding column's bytes, in the file's ``dtype``."""
    chunk = column.combine_chunks()
    values = np.frombuffer(chunk.buffers()[1], dtype=_VECTOR_DTYPES[dtype], count=(chunk.offset + len(chunk)) * dim)
    return values[chunk.offset * dim :].reshape(-1, dim)


def _read_vectors(path, file: pq.ParquetFile, dim: int, dtype: str) -> np.ndarray:
    """(N, dim) float32 from the embedding column, row groups decoded on parallel threads.

    The half -> float conversion goes through torch: numpy's float16 cast is scalar code, ~4x
    slower than torch's vectorised one, and would alone cost more than the whole read.
    """
    import torch

    groups = file.metadata.num_row_groups
    starts = np.cumsum([0] + [file.metadata.row_group(i).num_rows for i in range(groups)])
    out = np.empty((starts[-1], dim), dtype=np.float32)
    target = torch.from_numpy(out)

    def decode(block: range, reader: pq.ParquetFile | None = None) -> None:
        reader = reader or pq.ParquetFile(path, memory_map=True, page_checksum_verification=True)  # one per thread
        for i in block:
            chunk = reader.read_row_group(i, columns=["embedding"], use_threads=False).column(0)
            target[starts[i] : starts[i + 1]] = torch.from_numpy(_vectors(chunk, dim, dtype))

    workers = max(1, min(groups, torch.get_num_threads(), 4))  # the job's thread budget
    blocks = [range(groups)[k::workers] for k in range(workers)]
    if workers == 1:
        decode(blocks[0], file)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(decode, blocks))
    return out


def write_checksums(embed_dir) -> None:
    """Record the CRC-32 of every layer file of an embeddings directory (its last file)."""
    root = Path(embed_dir)
    sums = {str(f.relative_to(root)): file_crc32(f) for f in sorted(root.glob("*/layer_*.parquet"))}
    with atomic_path(root / CHECKSUMS) as tmp:
        Path(tmp).write_text(json.dumps(sums, indent=1, sort_keys=True))


def embed_dir_of(path) -> Path:
    """The embeddings directory (a job's output) holding a layer file."""
    return Path(path).parent.parent


def check_layer_file(path) -> None:
    """A layer file's CRC-32 against its directory's checksums.json (none for directories
    written before checksums: page checksums alone)."""
    path, root = Path(path), embed_dir_of(path)
    target = relative(root)
    if not (root / CHECKSUMS).exists():
        return
    try:
        expected = json.loads((root / CHECKSUMS).read_text())[str(path.relative_to(root))]
    except (OSError, ValueError, KeyError) as exc:
        raise damaged(root / CHECKSUMS, f"has no readable checksum of {path.name} ({exc})", target) from exc
    check_file_crc32(path, expected, target)


def _unreadable(path, exc: Exception) -> Exception:
    return damaged(path, f"not a readable tunnelscope embedding file ({exc})", relative(embed_dir_of(path)))


def read_metadata(path) -> dict:
    """The metadata of one layer file (layer, layer_name, pooling, dim, dtype, num_classes, ...),
    without reading its rows."""
    try:
        return json.loads(pq.read_schema(path).metadata[b"tunnelscope"])
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError) as exc:
        raise _unreadable(path, exc) from exc


def read_embeddings(path, select=None) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Return (metadata, vectors float32 (N, D), labels (N,), splits (N,) str).

    ``select(labels, splits)`` -> boolean mask keeps only those rows; their vectors are decoded
    row group by row group, so memory holds the kept rows and one group, not the whole file.
    The file is checked first (``check_layer_file``) and its pages as they are decoded.
    """
    check_layer_file(path)
    try:
        file = pq.ParquetFile(path, memory_map=True, page_checksum_verification=True)
        meta = json.loads(file.schema_arrow.metadata[b"tunnelscope"])
        _check_columns(file.schema_arrow)
        table = file.read(columns=["label", "split"])
        labels, splits = table.column("label").to_numpy(), _split_names(table.column("split"))
        if select is not None:
            keep = np.asarray(select(labels, splits), dtype=bool)
            vectors = _read_selected(file, meta["dim"], meta["dtype"], keep)
            labels, splits = labels[keep], splits[keep]
        else:
            vectors = _read_vectors(path, file, meta["dim"], meta["dtype"])
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError) as exc:
        raise _unreadable(path, exc) from exc
    return meta, vectors, labels, splits


def _check_columns(schema: pa.Schema) -> None:
    """The column types EmbeddingWriter writes (files of early versions had a list column)."""
    for name, is_type in (("embedding", pa.types.is_fixed_size_binary), ("split", pa.types.is_dictionary)):
        if not is_type(schema.field(name).type):
            raise TypeError(
                f"column {name!r} is {schema.field(name).type}, not as EmbeddingWriter writes it; embed again"
            )


def _split_names(split: pa.ChunkedArray) -> np.ndarray:
    split = split.combine_chunks()  # decode the few distinct names once, not per row
    return np.asarray(split.dictionary.to_pylist(), dtype=str)[split.indices.to_numpy()]


def _read_selected(file: pq.ParquetFile, dim: int, dtype: str, keep: np.ndarray) -> np.ndarray:
    """The vectors of the rows where ``keep``, one row group at a time (groups without any skipped)."""
    out = np.empty((int(keep.sum()), dim), dtype=np.float32)
    start = filled = 0
    for i in range(file.metadata.num_row_groups):
        n = file.metadata.row_group(i).num_rows
        rows = np.flatnonzero(keep[start : start + n])
        start += n
        if not len(rows):
            continue
        out[filled : filled + len(rows)] = _vectors(
            file.read_row_group(i, columns=["embedding"]).column(0), dim, dtype
        )[rows]
        filled += len(rows)
    return out


def layer_path(embed_dir: str | Path, pooling: str, layer: int) -> Path:
    """The file of one layer's embeddings under one pooling, in an eval set's embeddings directory."""
    return Path(embed_dir) / pooling / f"layer_{int(layer):03d}.parquet"


def layer_files(embed_dir: str | Path, pooling: str) -> list[Path]:
    """Every layer file of one pooling in an eval set's embeddings directory, in layer order."""
    files = sorted((Path(embed_dir) / pooling).glob("layer_*.parquet"))
    if not files:
        raise FileNotFoundError(f"{embed_dir}: no embeddings for pooling {pooling} ({pooling}/layer_*.parquet)")
    return files
