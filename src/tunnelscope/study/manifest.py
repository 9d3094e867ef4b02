"""One study per results directory: the record of the study that owns it, and the run lock.

The first run of a study records it in its results directory (``study.json``): the config files
and working directory that own the directory, and the study's settings. A run of the owning config
from the owning working directory is that study, edited: Snakemake keeps its params records in
that working directory's ``.snakemake/``, so an edit reruns exactly what it changes, and the record
is updated. A run of another config, or from another working directory, has no such records: it is
refused unless its settings are identical to the recorded ones (then it computes the same files).

``study.lock`` keeps two runs out of one results directory at once (Snakemake's own lock is per
working directory). Only the Snakemake main process checks, locks and records, and it locks and
records only in a run that starts jobs (dry runs, reports and ``--unlock`` only check); the jobs
that a cluster executor runs read the Snakefile too, and do none of it.
"""

from __future__ import annotations

import atexit
import copy
import fcntl
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from tunnelscope.registry import parse_python_arch
from tunnelscope.study import paths

MANIFEST = paths.relative("study_manifest")
LOCK = paths.relative("study_lock")
FORMAT = 1

# Keys that change no output (the Study leaves them out of every job's params: see Study._compute
# and embed_params), and ``results``, the directory itself. Configs that differ only here are one
# study.
NON_RESULT_KEYS = ("results", "compute.device", "compute.resident_mb", "embed.batch_size", "embed.keep")
# Values that are paths, relative to the working directory: compared resolved, so that "data/x"
# from two working directories counts as two datasets.
PATH_KEYS = {"root", "class_list", "weights", "hf_cache"}
ADVICE = (
    "give this study its own `results:`, or hand the directory over with: cd {workdir} && tunnelscope adopt {config}"
)


class ManifestError(RuntimeError):
    """A run refused on its results directory; the message is one line."""


@dataclass(frozen=True)
class Owner:
    """The config files and working directory of a run."""

    configs: tuple[str, ...]
    workdir: str

    @classmethod
    def here(cls, configs) -> Owner:
        """This process's owner: ``configs`` resolved, the working directory."""
        return cls(tuple(str(Path(c).resolve()) for c in configs), str(Path.cwd()))

    @classmethod
    def from_record(cls, record: dict) -> Owner:
        return cls(tuple(record["configs"]), record["workdir"])

    def record(self) -> dict:
        return {"configs": list(self.configs), "workdir": self.workdir}

    def __str__(self) -> str:
        return f"{' + '.join(self.configs) or 'no config file'} in {self.workdir}"


def study_settings(config: dict) -> dict:
    """The settings that determine a study's outputs: its validated config (schema defaults
    filled) without NON_RESULT_KEYS, paths resolved, as JSON reads it back."""
    settings = _resolve_paths(copy.deepcopy(config))
    for dotted in NON_RESULT_KEYS:
        *parents, leaf = dotted.split(".")
        node = settings
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return json.loads(_canonical(settings))


def _resolve_paths(value, key: str | None = None):
    if isinstance(value, dict):
        return {k: _resolve_paths(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_resolve_paths(v, key) for v in value]
    if isinstance(value, str) and key in PATH_KEYS:
        return str(Path(value).resolve())
    if isinstance(value, str) and value.startswith("python:"):
        file, function = parse_python_arch(value)
        return f"python:{Path(file).resolve()}:{function}"
    return value


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(_canonical(settings).encode()).hexdigest()


_UNSET = object()


def first_difference(recorded, current, key: str = "") -> str | None:
    """The first dotted key (in the current config's order) whose value differs, with both values."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        for k in [*current, *(k for k in recorded if k not in current)]:
            found = first_difference(recorded.get(k, _UNSET), current.get(k, _UNSET), f"{key}.{k}" if key else k)
            if found:
                return found
        return None
    if isinstance(recorded, list) and isinstance(current, list) and len(recorded) == len(current):
        for i, (a, b) in enumerate(zip(recorded, current)):
            found = first_difference(a, b, f"{key}[{i}]")
            if found:
                return found
        return None
    if recorded is not _UNSET and current is not _UNSET and _canonical(recorded) == _canonical(current):
        return None
    return f"{key} ({_show(recorded)} there, {_show(current)} here)"


def _show(value, width: int = 60) -> str:
    text = "unset" if value is _UNSET else _canonical(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def read(results) -> dict | None:
    """The results directory's record, None when it has none."""
    path = Path(results) / MANIFEST
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not {"owner", "fingerprint", "settings"} <= record.keys():
            raise ValueError("not a study record")
        Owner.from_record(record["owner"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ManifestError(
            f"{path}: unreadable ({exc}); if this directory is your study's, record it again with: tunnelscope adopt CONFIG"
        ) from None
    return record


def check(results, owner: Owner, settings: dict) -> None:
    """Refuse (ManifestError) a run of another study on ``results``: another owner whose settings
    differ from the recorded ones."""
    record = read(results)
    if record is None or Owner.from_record(record["owner"]) == owner:
        return
    if record["fingerprint"] == fingerprint(settings):
        return
    # a record edited by hand may differ only in its fingerprint
    difference = first_difference(record["settings"], settings) or "its settings"
    advice = ADVICE.format(workdir=owner.workdir, config=" ".join(owner.configs) or "CONFIG")
    raise ManifestError(
        f"results directory {Path(results).resolve()} holds another study: {Owner.from_record(record['owner'])} "
        f"(recorded {record.get('recorded', '?')}); this run, {owner}, differs at {difference}; {advice}"
    )


def record(results, owner: Owner, settings: dict) -> None:
    """Write the record atomically (a killed run leaves the old one or the new one)."""
    path = Path(results) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {
        "format": FORMAT,
        "owner": owner.record(),
        "fingerprint": fingerprint(settings),
        "recorded": _now(),
        "host": socket.gethostname(),
        "settings": settings,
    }
    tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
    # os.open with 0o666 honours the umask (tempfile.mkstemp would make it 0600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    with os.fdopen(fd, "w") as fh:
        json.dump(content, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class ResultsLock:
    """An exclusive flock on RESULTS/study.lock, held for the life of the process.

    The kernel releases a flock when its holder dies, however it dies (kill -9 included), so a
    lock file nobody holds is free. The file names its holder while held and is emptied on a clean
    exit: a free lock file that still names a holder is a run that was killed. It is never
    deleted: a run could otherwise lock a file that another has just unlinked. On NFS, Linux maps
    flock to NFS byte-range locks, which other clients see."""

    def __init__(self, results):
        self.path = Path(results) / LOCK
        self._fd: int | None = None
        self._pid = os.getpid()

    def acquire(self, owner: Owner) -> str | None:
        """Take the lock, or raise ManifestError naming the run that holds it. Returns a note
        when a killed run left the file behind."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ManifestError(
                f"results directory {self.path.parent.resolve()} is in use by another run "
                f"({_describe(holder)}); this run, {owner}, is refused: start it again when that run has ended"
            ) from None
        previous = _holder(fd)
        os.ftruncate(fd, 0)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), **owner.record()}
        os.pwrite(fd, (_canonical(holder) + "\n").encode(), 0)
        self._fd = fd
        atexit.register(self.release)
        if previous:
            return f"a previous run ({_describe(previous)}) ended without cleaning up {self.path.resolve()}; continuing"
        return None

    def release(self) -> None:
        """Empty the file (a clean exit) and drop the lock; only in the process that took it."""
        if self._fd is None or os.getpid() != self._pid:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None


def _holder(fd: int) -> dict | None:
    text = os.pread(fd, 65536, 0).decode(errors="replace").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {"pid": "?", "note": text[:80]}


def _describe(holder: dict | None) -> str:
    if not holder:
        return "pid unknown"
    configs = " + ".join(holder.get("configs", [])) or "?"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}, {configs} in {holder.get('workdir', '?')}"


def claim(results, owner: Owner, settings: dict) -> tuple[ResultsLock, str | None]:
    """Before the first job of a run: take the lock, check again (a run that ended since this one
    read the Snakefile may have recorded another study), and record the study when this run owns
    the directory or is its first. Returns the lock (held until exit) and the lock's note."""
    lock = ResultsLock(results)
    note = lock.acquire(owner)
    try:
        check(results, owner, settings)
        recorded = read(results)
        if recorded is None or Owner.from_record(recorded["owner"]) == owner:
            record(results, owner, settings)
    except ManifestError:
        lock.release()
        raise
    return lock, note
