"""Checksums where data is read, and the one advice every damage message ends with.

Each kind of output carries what proves it unchanged since it was written: a prepared store a
CRC-32 per chunk of pixels and per index file (store.json), a checkpoint the SHA-256 of its
weights and facts (safetensors metadata), every Parquet file CRC-32 page checksums, an
embeddings directory the CRC-32 of each layer file (checksums.json), and every table file
(Parquet, CSV, LaTeX) its SHA-256 in a sidecar (io.digest_path). A job that reads a file
checks it first and stops with a ``DamageError``: one line naming the file, ending with the
commands that rebuild it, the ones ``tunnelscope verify`` prints.

CRC-32 (zlib) where data is large: 3.5 GB/s here against 1.6 for SHA-256 and 0.7 for BLAKE2b
(64 MB buffers, this machine), and zlib releases the GIL, so reader threads check in parallel.
It is there to catch damage (a disk, a copy, a stray write), not tampering.
"""

from __future__ import annotations

import os
import shlex
import zlib
from pathlib import Path

# The rebuild command of the running study, set by the Snakefile for its jobs (they inherit it):
# snakemake with the run's cores, Snakefile, working directory and config files.
REBUILD_ENV = "TUNNELSCOPE_REBUILD"
DEFAULT_REBUILD = "snakemake --cores all --configfile CONFIG"
BLOCK = 8 << 20  # bytes read per call while checksumming: bounds memory, not speed


class DamageError(RuntimeError):
    """A file whose bytes differ from those its writer recorded, or that is cut short: ``path``,
    ``problem`` and ``target``, the job output that rebuilding it means rerunning."""

    def __init__(self, path, problem: str, target):
        super().__init__(f"{path}: {problem}; to rebuild it run: {rebuild_command([target])}")
        self.path, self.problem, self.target = Path(path), problem, Path(target)


def rebuild_base(cores, snakefile, configfiles, workdir=None, invoked_from=None) -> str:
    """The snakemake call of a study: its cores, and its Snakefile and working directory where
    snakemake would not find them by default; config files as absolute paths."""
    workdir = Path(workdir or Path.cwd()).resolve()
    invoked_from = Path(invoked_from or workdir).resolve()
    parts = ["snakemake", "--cores", str(cores or "all")]
    snakefile = Path(snakefile).resolve()
    if snakefile not in (workdir / "Snakefile", workdir / "workflow" / "Snakefile"):
        parts += ["--snakefile", str(snakefile)]
    if workdir != invoked_from:
        parts += ["--directory", str(workdir)]
    if configfiles:
        parts += ["--configfile", *(str((invoked_from / f).resolve()) for f in configfiles)]
    return shlex.join(parts)


def rebuild_command(targets, base: str | None = None) -> str:
    """The command that rebuilds ``targets`` (outputs of jobs) and everything made from them:
    Snakemake's --forcerun removes and reruns their jobs and the jobs downstream, which a plain
    rerun would not do while the downstream files are newer than a removed intermediate."""
    base = base or os.environ.get(REBUILD_ENV) or DEFAULT_REBUILD
    return f"{base} --forcerun {' '.join(shlex.quote(str(t)) for t in targets)}"


def damaged(path, problem: str, target=None) -> DamageError:
    """The error for a damaged ``path`` (a file of the job output ``target``, default itself)."""
    return DamageError(path, problem, target or path)


def crc32_range(fd: int, start: int, stop: int) -> tuple[int, int]:
    """(CRC-32 of bytes [start, stop) of the open file ``fd``, bytes actually read)."""
    crc, pos = 0, start
    while pos < stop:
        block = os.pread(fd, min(BLOCK, stop - pos), pos)
        if not block:
            break
        crc = zlib.crc32(block, crc)
        pos += len(block)
    return crc, pos - start


def file_crc32(path) -> int:
    """CRC-32 of a whole file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return crc32_range(fd, 0, os.fstat(fd).st_size)[0]
    finally:
        os.close(fd)


def check_file_crc32(path, expected: int, target=None) -> None:
    """Raise ``damaged`` unless the file's CRC-32 is ``expected``."""
    found = file_crc32(path)
    if found != expected:
        raise damaged(path, f"CRC-32 {found:08x}, {expected:08x} when written", target)


def relative(path) -> Path:
    """``path`` as a job names it: relative to the working directory where it lies below it."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path.cwd().resolve()) if path.is_absolute() else path
    except ValueError:
        return path
