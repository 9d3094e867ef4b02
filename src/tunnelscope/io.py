"""Atomic file writes and the project's small tables (Parquet + CSV, JSON)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa


def _remove_stale(path: Path) -> None:
    """Temporaries of ``path`` left by a killed run of its job (each job has one writer)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A killed job therefore never leaves a file under the final name that a later job could
    take for complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
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
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if any(path.iterdir()):  # never replace finished output silently
                raise FileExistsError(f"{path}: exists and is not empty; remove it to write it again")
            path.rmdir()  # Snakemake may pre-create an empty output directory.
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_table(df: pd.DataFrame, parquet: str, csv: str | None = None) -> None:
    """``df`` as Parquet with page checksums (checked by ``read_table``), and as CSV if asked."""
    with atomic_path(parquet) as tmp:
        df.to_parquet(tmp, index=False, write_page_checksum=True)
    if csv:
        with atomic_path(csv) as tmp:
            df.to_csv(tmp, index=False)


def read_table(path: str) -> pd.DataFrame:
    """A Parquet table, its page checksums checked: a damaged one is a ``DamageError`` naming it."""
    from tunnelscope.integrity import damaged, relative

    try:
        return pd.read_parquet(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as exc:
        raise damaged(path, f"not a readable Parquet table ({exc})", relative(path)) from exc


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(obj, path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
