"""Atomic file writes and the project's small tables (Parquet + CSV, JSON).

Every table file (Parquet, CSV, LaTeX) has its SHA-256 recorded beside it when written, in a
hidden sidecar ``.NAME.sha256`` (``sha256sum`` format: ``sha256sum -c`` checks it too), and its
readers check it first. A sidecar, rather than one digest file per directory, because each table
has exactly one writer (its job), so no two rules ever write one digest file (a shared one would
need merging under a lock, racy on network filesystems); and rather than a digest in the Parquet
footer, because a digest cannot cover the footer holding it, nor a CSV or TeX file. Snakemake
neither declares nor tracks the sidecars: they change no job's inputs or outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa


def _umask_from_proc() -> int | None:
    """This process's umask as Linux reports it (4.7 and later), without changing it."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_at_import() -> int:
    # os.umask can only be read by setting it: process-wide, so a thread creating a file in
    # between would get mode 0; done once here, while importing, not per write.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_IMPORT_UMASK = _umask_from_proc()
if _IMPORT_UMASK is None:
    _IMPORT_UMASK = _umask_at_import()


def umask() -> int:
    """The current umask: read from /proc where it can be (a later os.umask is seen), else the
    one at import."""
    current = _umask_from_proc()
    return _IMPORT_UMASK if current is None else current


def _shareable(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a temporary from mkstemp (0600) or mkdtemp (0700) the mode an ordinary open or mkdir
    would have had (0644 / 0755 under umask 022), so that collaborators can read a study."""
    kept = stat.S_IMODE(os.stat(path).st_mode) & 0o7000  # setgid inherited from a group directory
    os.chmod(path, kept | ((0o777 if directory else 0o666) & ~umask()))


def _remove_stale(path: Path) -> None:
    """Temporaries of ``path`` left by a killed run of its job (each job has one writer)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def digest_path(path: str | os.PathLike) -> Path:
    """Where the SHA-256 of table file ``path`` is recorded: a hidden sidecar beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.sha256")


def _write_digest(path: Path, digest: str) -> None:
    with atomic_path(digest_path(path)) as tmp:
        Path(tmp).write_text(f"{digest}  {path.name}\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, digest: bool = False):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A killed job therefore never leaves a file under the final name that a later job could
    take for complete. The file gets the umask's mode, as an ordinary open would give it.
    ``digest``: record its SHA-256 (``digest_path``), for ``check_digest``: for table files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        _shareable(tmp)
        recorded = file_sha256(tmp) if digest else None
        if recorded:
            # The old digest goes before the new file lands and the new one after: a kill in
            # between leaves a file with no digest (unchecked), never one with a wrong digest.
            digest_path(path).unlink(missing_ok=True)
        os.replace(tmp, path)
        if recorded:
            _write_digest(path, recorded)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Like ``atomic_path`` for a directory: filled under a temporary name, then renamed; the
    directory gets the umask's mode (the files in it get theirs from whoever writes them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _shareable(tmp, directory=True)
        if path.exists():
            if any(path.iterdir()):  # never replace finished output silently
                raise FileExistsError(f"{path}: exists and is not empty; remove it to write it again")
            path.rmdir()  # Snakemake may pre-create an empty output directory.
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_digest(path: str | os.PathLike) -> None:
    """Raise a ``DamageError`` naming ``path`` unless its SHA-256 is the one recorded when it was
    written; a file with no digest recorded (not written by tunnelscope) passes."""
    from tunnelscope.integrity import damaged, relative

    sidecar = digest_path(path)
    try:
        recorded = sidecar.read_text().split()
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise damaged(path, f"its digest {sidecar.name} is unreadable ({exc})", relative(path)) from exc
    found = file_sha256(path)
    if recorded[:1] != [found]:
        raise damaged(
            path, f"SHA-256 {found[:16]}..., not the one recorded when written ({sidecar.name})", relative(path)
        )


def write_table(df: pd.DataFrame, parquet: str, csv: str | None = None) -> None:
    """``df`` as Parquet with page checksums, and as CSV if asked; each file's digest recorded
    (checked by ``read_table`` and ``read_csv``)."""
    with atomic_path(parquet, digest=True) as tmp:
        df.to_parquet(tmp, index=False, write_page_checksum=True)
    if csv:
        write_csv(df, csv)


# Significant digits of a float in a CSV table: float32 carries about 7, so the 7th and later
# (0.6424000263214111) are noise; 6 keep every accuracy of a test set up to 10^6 images exact.
# Parquet tables keep full precision.
CSV_DIGITS = 6


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """``df`` as a CSV table (no index), floats to ``CSV_DIGITS`` significant digits, its digest
    recorded."""
    with atomic_path(path, digest=True) as tmp:
        df.to_csv(tmp, index=False, float_format=f"%.{CSV_DIGITS}g")


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A Parquet table, its digest and page checksums checked: a damaged one is a
    ``DamageError`` naming it. (A list of paths, as a rule's input may be, is read as one.)"""
    from tunnelscope.integrity import damaged, relative

    for one in [path] if isinstance(path, (str, os.PathLike)) else path:
        check_digest(one)
    try:
        return pd.read_parquet(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as exc:
        raise damaged(path, f"not a readable Parquet table ({exc})", relative(path)) from exc


def read_csv(path: str | os.PathLike, **kwargs) -> pd.DataFrame:
    """A CSV table, its digest checked first (``pd.read_csv``'s ``kwargs``)."""
    check_digest(path)
    return pd.read_csv(path, **kwargs)


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_json(obj, path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
