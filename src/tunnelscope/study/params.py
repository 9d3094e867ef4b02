"""What goes into a stage's params: the rule that makes them exact (plain, sorted, builtin-typed
dicts of exactly the keys a stage reads), the probe's settings, and the fingerprints of the
files a result depends on (a dataset tree, a python: model's source). Torch-free.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tunnelscope.registry import (
    PROBE_COMMON_KEYS,
    SOLVERS,
)

# embed settings that change no embedding (how fast it is written, whether it is kept): left out
# of the embed jobs' params, so that changing them reruns nothing (study.manifest.NON_RESULT_KEYS).
EMBED_NON_RESULT_KEYS = ("batch_size", "keep")


def embed_settings(config: dict) -> dict:
    """The embed section's settings that change an embedding (EMBED_NON_RESULT_KEYS left out)."""
    return {k: v for k, v in config["embed"].items() if k not in EMBED_NON_RESULT_KEYS}


def sorted_params(value):
    """``value`` with every dict's keys sorted, tuples as lists: a param Snakemake compares exactly."""
    if isinstance(value, dict):
        return {k: sorted_params(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [sorted_params(v) for v in value]
    return value


def solver_settings(probe: dict) -> dict:
    """probe.solver is one solver or a list: ``solvers`` all of them, ``solver`` the first, which
    drives the metrics."""
    solvers = list(probe["solver"]) if isinstance(probe["solver"], list) else [probe["solver"]]
    return {"solvers": solvers, "solver": solvers[0]}


def probe_settings(probe: dict) -> dict:
    """The probe keys ``probe["solver"]`` reads (registry.SOLVERS); its own seed as
    ``probe_seed``, since "seed" is the cell's."""
    used = (*PROBE_COMMON_KEYS, *SOLVERS[probe["solver"]])
    return {("probe_seed" if k == "seed" else k): probe[k] for k in used}


_SOURCE_SHA256: dict[tuple, str] = {}


def source_sha256(path: str) -> str:
    """The sha256 of a python: model's file, read once per process and file state."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SOURCE_SHA256:
        _SOURCE_SHA256[key] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return _SOURCE_SHA256[key]


def source_fingerprint(root: str, max_entries: int = 20000) -> str:
    """A cheap stamp of a dataset directory: names, sizes and mtimes two levels deep.

    Adding, removing or renaming files in a class folder changes that folder's mtime, so the
    prepared cache is rebuilt; a missing root gives "missing" (dry runs work without data).
    """
    base = Path(root)
    if not base.exists():
        return "missing"
    digest = hashlib.sha1()
    entries = [base]
    for level in range(2):
        children = []
        for entry in entries:
            if entry.is_dir():
                children += sorted(entry.iterdir())
        entries = children[:max_entries]
        for entry in entries:
            st = entry.stat()
            digest.update(f"{entry.relative_to(base)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
