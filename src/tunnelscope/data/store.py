"""The prepared-image store: one directory per (dataset, transform), written incrementally by
``prepare`` and read image by image, so no job ever holds a split in memory.

Every image is kept whole, resized so that its shorter side is S = int(R / crop_pct) (the resize
of the eval transform, aspect ratio kept), or as it is for a set declared at its native
resolution R. The eval view is then the centre R x R crop, exactly the eval transform, and the
training view is a RandomResizedCrop over the *whole* image, as torchvision's does on the
original. The files are plain NumPy, readable without tunnelscope:

    store.json              format, version, dataset, classes, resolution, shorter side, splits,
                            checksums (CRC-32 of each chunk of pixels and of the index files)
    {split}.pixels.npy      1-D uint8: the H x W x 3 bytes of every image, one after another
    {split}.index.npy       (N, 3) int64: byte offset, height and width of each image
    {split}.labels.npy      (N,) int64

    image i = np.load(".../train.pixels.npy", mmap_mode="r")[off : off + h * w * 3].reshape(h, w, 3)

``write_store`` fills a sibling ``.NAME.partial`` directory chunk by chunk and records each
finished chunk, so a killed ``prepare`` resumes where it stopped; the directory is renamed to its
final name only once complete, so a store that exists is a complete one. Each chunk's CRC-32
is read back from the file once written and kept in store.json; a reading process checks a
chunk the first time it reads an image of it (``StoreSplit.image``), so damage is reported before
any image of the chunk is used, at the cost of one checksum pass per job over what it reads
(benchmarks/RESULTS.md, "Checksum cost"). Reads go through
``os.pread`` rather than a memory map: mapped pages count against a job's resident memory (and
a cluster's memory limit) while reads leave them in the page cache only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tunnelscope.integrity import DamageError, crc32_range, file_crc32
from tunnelscope.io import atomic_path
from tunnelscope.joblog import progress_bar
from tunnelscope.study.paths import STORE_MANIFEST

log = logging.getLogger("tunnelscope.store")

FORMAT = "tunnelscope-image-store"
VERSION = 1
CHUNK_BYTES = 64 << 20  # pixels decoded per chunk: the bound on prepare's memory


class StoreError(RuntimeError):
    """An unreadable or incomplete store, naming its path."""


class StoreDamage(DamageError, StoreError):
    """A store file that is cut short or differs from what prepare wrote."""


def damaged(path, problem: str, root) -> StoreDamage:
    return StoreDamage(path, problem, root)


def check_file_crc32(path, expected: int, root) -> None:
    found = file_crc32(path)
    if found != expected:
        raise damaged(path, f"CRC-32 {found:08x}, {expected:08x} when written", root)


def stored_size(height: int, width: int, resolution: int, shorter_side: int, native: bool) -> tuple[int, int]:
    """(h, w) an image of (height, width) is stored at: shorter side ``shorter_side`` with the
    long side as torchvision's Resize computes it, or unchanged for a native-resolution set whose
    image already has its shorter side at ``resolution``."""
    if native and min(height, width) == resolution:
        return height, width
    if height <= width:
        return shorter_side, int(shorter_side * width / height)
    return int(shorter_side * height / width), shorter_side


@dataclass
class SplitPlan:
    """What one split of a store will hold: labels and stored (h, w) per image, the chunks it is
    written in, and ``fill(start, stop)`` giving those images (uint8 H x W x 3 arrays, or an
    Exception for an unreadable one)."""

    labels: np.ndarray
    shapes: np.ndarray  # (N, 2) int64
    fill: Callable[[int, int], Sequence]
    chunks: list[tuple[int, int]]
    names: Sequence = ()  # what to call image i in an error message


def byte_chunks(shapes: np.ndarray, budget: int = CHUNK_BYTES) -> list[tuple[int, int]]:
    """Consecutive (start, stop) ranges of at most ``budget`` pixel bytes (at least one image)."""
    sizes = shapes[:, 0] * shapes[:, 1] * 3
    chunks, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > budget:
            chunks.append((start, i))
            start, total = i, 0
        total += int(size)
    if len(sizes):
        chunks.append((start, len(sizes)))
    return chunks


def _fingerprint(meta: dict, plans: dict[str, SplitPlan]) -> str:
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for split in sorted(plans):
        digest.update(np.ascontiguousarray(plans[split].shapes).tobytes())
        digest.update(np.ascontiguousarray(plans[split].labels).tobytes())
    return digest.hexdigest()


def write_store(out_dir: str | Path, meta: dict, plans: dict[str, SplitPlan], on_bad_image: str = "error") -> None:
    """Write the store of ``plans`` (one per split) to ``out_dir``, resuming a partial one that
    was started with the same metadata and images."""
    out = Path(out_dir)
    partial = out.with_name(f".{out.name}.partial")
    fingerprint = _fingerprint(meta, plans)
    progress_path = partial / "progress.json"
    progress = {"fingerprint": fingerprint, "done": {}, "bad": {}}
    if progress_path.exists():
        saved = json.loads(progress_path.read_text())
        if saved.get("fingerprint") == fingerprint:
            progress = saved
            log.info("resuming %s: %s chunks already written", out, {s: len(c) for s, c in progress["done"].items()})
        else:
            log.info("discarding %s: it was started with other settings or images", partial)
            shutil.rmtree(partial)
    elif partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    summary = {}
    for split, plan in plans.items():
        summary[split] = _write_split(partial, split, plan, progress, progress_path, on_bad_image)
    doc = {"format": FORMAT, "version": VERSION, **meta, "splits": summary}
    doc["checksum"] = _doc_crc32(doc)
    with atomic_path(partial / STORE_MANIFEST) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1, sort_keys=True))
    progress_path.unlink()
    if out.exists():
        shutil.rmtree(out)  # an empty directory Snakemake made, or an older store being replaced
    os.replace(partial, out)


def _doc_crc32(doc: dict) -> int:
    """CRC-32 of store.json's content other than this checksum itself."""
    return zlib.crc32(json.dumps({k: v for k, v in doc.items() if k != "checksum"}, sort_keys=True).encode())


def _write_split(
    partial: Path, split: str, plan: SplitPlan, progress: dict, progress_path: Path, on_bad_image: str
) -> dict:
    sizes = plan.shapes[:, 0] * plan.shapes[:, 1] * 3
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    pixels_path = partial / f"{split}.pixels.npy"
    done = set(progress["done"].setdefault(split, []))
    crcs = progress.setdefault("crc", {}).setdefault(split, {})
    bad = set(progress["bad"].setdefault(split, []))
    if not (pixels_path.exists() and done):
        _allocate(pixels_path, int(offsets[-1]))
    fd = os.open(pixels_path, os.O_RDWR)
    start_byte = _data_start(pixels_path)
    todo = [(k, c) for k, c in enumerate(plan.chunks) if k not in done]
    bar = progress_bar(
        total=len(plan.labels),
        initial=len(plan.labels) - sum(stop - start for _, (start, stop) in todo),
        desc=f"prepare {split}",
        leave=False,
        mininterval=2.0,
    )
    for k, (start, stop) in todo:
        for i, image in enumerate(plan.fill(start, stop), start=start):
            if isinstance(image, Exception):
                name = plan.names[i] if len(plan.names) else f"image {i}"
                if on_bad_image == "error":
                    raise DatasetError(
                        f"{name}: unreadable image ({image}); set on_bad_image: skip to leave such files out"
                    )
                log.warning("skipping unreadable image %s (%s)", name, image)
                bad.add(i)
                continue
            if image.shape != (*plan.shapes[i], 3):
                raise StoreError(f"image {i} of {split} came out {image.shape}, planned {(*plan.shapes[i], 3)}")
            os.pwrite(fd, np.ascontiguousarray(image).data, start_byte + int(offsets[i]))
        os.fdatasync(fd)  # the chunk is on disk before the progress file says so
        # Its checksum from the bytes as they lie in the file (read back from the page cache).
        crcs[str(k)] = crc32_range(fd, start_byte + int(offsets[start]), start_byte + int(offsets[stop]))[0]
        progress["done"][split].append(k)
        progress["bad"][split] = sorted(bad)
        with atomic_path(progress_path) as tmp:
            Path(tmp).write_text(json.dumps(progress))
        bar.update(stop - start)
    bar.close()
    os.close(fd)
    keep = np.setdiff1d(np.arange(len(plan.labels)), sorted(bad))
    if bad:
        log.warning("%s: skipped %d unreadable images of %d", split, len(bad), len(plan.labels))
    if len(keep) == 0:
        raise DatasetError(f"{split}: no readable images")
    index = np.stack([offsets[:-1], plan.shapes[:, 0], plan.shapes[:, 1]], axis=1)[keep]
    np.save(partial / f"{split}.index.npy", index.astype(np.int64))
    np.save(partial / f"{split}.labels.npy", plan.labels[keep].astype(np.int64))
    shapes = {tuple(s) for s in plan.shapes[keep].tolist()}
    return {
        "images": int(len(keep)),
        "pixel_bytes": int(offsets[-1]),
        "uniform_shape": list(shapes.pop()) if len(shapes) == 1 else None,
        # (first byte, end byte, CRC-32) of each chunk of pixel data (from the data's start)
        "chunks": [[int(offsets[a]), int(offsets[b]), crcs[str(k)]] for k, (a, b) in enumerate(plan.chunks)],
        "index_crc32": file_crc32(partial / f"{split}.index.npy"),
        "labels_crc32": file_crc32(partial / f"{split}.labels.npy"),
    }


def _allocate(path: Path, nbytes: int) -> None:
    """A .npy file of ``nbytes`` uint8 (zeros, sparse on disk) to be filled with ``os.pwrite``:
    written pages then sit in the page cache, not in this process's memory as a map's would."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": (nbytes,)})
        fh.truncate(fh.tell() + nbytes)


def _data_start(path: Path) -> int:
    """Byte offset of the data of a 1-D .npy file, with its dtype and length checked."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh)
        start = fh.tell()
    if dtype != np.uint8 or len(shape) != 1 or os.path.getsize(path) != start + shape[0]:
        raise StoreError(f"{path}: truncated or not a 1-D uint8 array")
    return start


class StoreSplit:
    """One split of a store: labels, stored sizes, and the images read on demand."""

    def __init__(self, root: Path, split: str, info: dict):
        self.path = root / f"{split}.pixels.npy"
        self.name, self.root = split, root
        for name in ("index", "labels"):  # small: checked whole when opened
            if f"{name}_crc32" in info:
                check_file_crc32(root / f"{split}.{name}.npy", info[f"{name}_crc32"], root)
        try:
            index = np.load(root / f"{split}.index.npy")
            self.labels = np.load(root / f"{split}.labels.npy")
            self._data_start = _data_start(self.path)
        except StoreError as exc:
            raise damaged(self.path, str(exc).removeprefix(f"{self.path}: "), root) from exc
        except (OSError, ValueError) as exc:
            raise damaged(root, f"split {split} is not readable ({exc})", root) from exc
        self.offsets, self.heights, self.widths = (index[:, k] for k in range(3))
        total = os.path.getsize(self.path) - self._data_start
        if len(self.labels) != len(index) or (
            len(index) and int(self.offsets[-1] + self.heights[-1] * self.widths[-1] * 3) > total
        ):
            raise damaged(self.path, "inconsistent with its index", root)
        self.uniform_shape = tuple(info["uniform_shape"]) if info["uniform_shape"] else None
        # Stores written before checksums have no chunks: read unchecked (ImageStore warns).
        self._chunks = np.asarray(info.get("chunks", []), dtype=np.int64).reshape(-1, 3)
        self._checked = np.zeros(len(self._chunks), dtype=bool)  # chunks this process has checked
        self._fd, self._pid = None, None

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self):  # data-loader workers reopen the file (and trust what was checked)
        return {**self.__dict__, "_fd": None, "_pid": None}

    @property
    def has_checksums(self) -> bool:
        return bool(len(self._chunks))

    def check_chunk(self, k: int) -> None:
        """Compare chunk ``k``'s bytes with the CRC-32 recorded when it was written."""
        first, end, expected = (int(v) for v in self._chunks[k])
        found, n = crc32_range(self._open(), self._data_start + first, self._data_start + end)
        if n != end - first:
            raise damaged(self.path, f"cut short in chunk {k} (bytes {first}-{end})", self.root)
        if found != expected:
            raise damaged(
                self.path,
                f"chunk {k} (bytes {first}-{end} of the pixel data) has CRC-32 {found:08x}, {expected:08x} when "
                "written; its images were not used",
                self.root,
            )
        self._checked[k] = True

    def check(self) -> None:
        """Check every chunk (``tunnelscope verify``)."""
        for k in range(len(self._chunks)):
            self.check_chunk(k)

    def _open(self) -> int:
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def _check_image(self, i: int) -> None:
        """The chunk of image ``i`` checked, once per process (an image lies in one chunk)."""
        if not len(self._chunks):
            return
        k = int(np.searchsorted(self._chunks[:, 0], self.offsets[i], side="right")) - 1
        if not self._checked[k]:
            self.check_chunk(k)

    @property
    def nbytes(self) -> int:
        return int((self.heights * self.widths).sum() * 3)

    def image(self, i: int, top: int = 0, rows: int | None = None) -> np.ndarray:
        """Image ``i`` as a fresh (h, w, 3) uint8 array; or only its ``rows`` rows from ``top``."""
        fd = self._open()
        self._check_image(i)
        h, w = int(self.heights[i]), int(self.widths[i])
        if rows is not None:
            if not 0 <= top <= top + rows <= h:
                raise IndexError(f"rows {top}:{top + rows} of image {i}, which has {h}")
            h = rows
        data = bytearray(h * w * 3)
        if os.preadv(fd, [data], self._data_start + int(self.offsets[i]) + top * w * 3) != len(data):
            raise damaged(self.path, f"image {i} is cut short", self.root)
        return np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3)

    def array(self) -> np.ndarray:
        """Every image as one (N, h, w, 3) array: only for uniform splits small enough to keep."""
        if self.uniform_shape is None:
            raise StoreError(f"{self.path}: images of different sizes cannot be one array")
        return (
            np.stack([self.image(i) for i in range(len(self))])
            if len(self)
            else np.empty((0, *self.uniform_shape, 3), np.uint8)
        )


class ImageStore:
    """A complete prepared store (``store.json`` exists only in one)."""

    def __init__(self, path: str | Path):
        self.root = Path(path)
        try:
            self.meta = json.loads((self.root / STORE_MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise damaged(self.root, f"not a prepared store ({exc})", self.root) from exc
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise StoreError(
                f"{self.root}: store format {self.meta.get('format')} v{self.meta.get('version')}, this tunnelscope reads {FORMAT} v{VERSION}; delete it and rerun"
            )
        if "checksum" in self.meta and _doc_crc32(self.meta) != self.meta["checksum"]:
            raise damaged(self.root / STORE_MANIFEST, "differs from what prepare wrote (CRC-32)", self.root)
        self.splits = {name: StoreSplit(self.root, name, info) for name, info in self.meta["splits"].items()}
        if not all(s.has_checksums for s in self.splits.values()):
            log.warning("%s: written before stores had checksums; read unchecked (rebuild it to check)", self.root)

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def resolution(self) -> int:
        return int(self.meta["resolution"])

    def check(self) -> None:
        """Check every chunk of every split against its recorded checksum."""
        for split in self.splits.values():
            split.check()

    def check_resolution(self, resolution: int) -> None:
        if self.resolution != resolution:
            raise StoreError(f"{self.root}: prepared for {self.resolution} px, read at {resolution} px")


def parallel_fill(pool: ThreadPoolExecutor, fill_one: Callable[[int], object]) -> Callable[[int, int], list]:
    """``fill`` for a plan whose images load one by one: each chunk decoded on the pool's
    threads (PIL releases the GIL while decoding and resizing)."""

    def fill(start: int, stop: int) -> list:
        return list(pool.map(fill_one, range(start, stop)))

    return fill


class DatasetError(RuntimeError):
    """A problem with a dataset on disk, naming the offending path."""
