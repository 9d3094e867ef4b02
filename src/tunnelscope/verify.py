"""``tunnelscope verify``: every file a study wrote, checked as the jobs that read it check it.

Stores (each chunk), checkpoints (their SHA-256), embedding files (checksums.json and page
checksums), every table file, Parquet, CSV or LaTeX (the SHA-256 its writer recorded beside it,
``io.digest_path``; Parquet also its page checksums), the probes' weights (the CRC-32 of each
array in the .npz) and the JSON files; a prepared store the study needs and lacks is missing, and
a killed job's temporary (``.NAME.*.tmp``, ``.NAME.partial``) is listed as incomplete: the job's
rerun clears it.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunnelscope.integrity import DamageError, damaged, rebuild_command, relative
from tunnelscope.io import check_digest, digest_path
from tunnelscope.study.paths import STORE_MANIFEST


@dataclass
class Finding:
    path: Path
    problem: str
    target: Path | None  # the output to rebuild; None for what needs no command


def check_results(study) -> tuple[int, list[Finding]]:
    """(files checked, what is wrong) for a study's results directory."""
    results = Path(study.results)
    findings, checked = [], 0
    for dataset, transform in study.prepared():
        if not Path(study.paths.path("prepared_manifest", dataset=dataset, transform=transform)).exists():
            root = Path(study.paths.path("prepared", dataset=dataset, transform=transform))
            findings.append(Finding(root, "missing: a store the study reads", root))
    for path in sorted(results.rglob("*")):
        if path.name.startswith(".") and (path.name.endswith(".tmp") or path.name.endswith(".partial")):
            findings.append(Finding(path, "incomplete: left by a killed job, cleared when it reruns", None))
            continue
        check = _checker(path)
        if check is None or any(part.startswith(".") for part in path.relative_to(results).parts):
            continue
        checked += 1
        try:
            check(path)
        except DamageError as exc:
            findings.append(Finding(exc.path, exc.problem, exc.target))
    return checked, findings


def _checker(path: Path):
    """The check for one file or store directory, or None for what has none."""
    if path.is_dir():
        return _check_store if (path / STORE_MANIFEST).exists() else None
    if (path.parent / STORE_MANIFEST).exists():
        return None  # a store's files: checked with their store
    if path.suffix == ".safetensors":
        return _check_checkpoint
    if path.name.endswith(".parquet"):
        return _check_layer if path.parents[2].name == "embeddings" else _check_table
    if path.name.endswith(".npz"):
        return _check_npz
    if digest_path(path).exists():  # a CSV or LaTeX table
        return check_digest
    if path.suffix == ".json":
        return _check_json
    return None


def _check_store(root: Path) -> None:
    from tunnelscope.data.store import ImageStore, StoreError

    try:
        ImageStore(root).check()
    except StoreError as exc:
        raise damaged(root, str(exc), relative(root)) from exc


def _check_checkpoint(path: Path) -> None:
    from tunnelscope.models.checkpoints import read_checkpoint

    read_checkpoint(str(path))


def _check_layer(path: Path) -> None:
    from tunnelscope.features.store import read_embeddings

    read_embeddings(path)


def _check_table(path: Path) -> None:
    from tunnelscope.io import read_table

    read_table(str(path))


def _check_npz(path: Path) -> None:
    """Every array of an .npz read: zipfile checks each member's CRC-32."""
    try:
        with np.load(path) as arrays:
            for name in arrays.files:
                arrays[name]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise damaged(path, f"not a readable .npz ({exc})", relative(path)) from exc


def _check_json(path: Path) -> None:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise damaged(path, f"not readable JSON ({exc})", relative(path)) from exc


def report(study, config: str, base: str) -> tuple[int, list[str]]:
    """(exit status, lines to print) of ``tunnelscope verify``."""
    results = Path(study.results)
    if not results.is_dir():
        return 1, [f"{results}: no results yet for {config}; build them with: {base}"]
    checked, findings = check_results(study)
    if not findings:
        return 0, [f"{config}: {checked} files and stores of {results} checked, all intact"]
    lines = [f"{f.path}: {f.problem}" for f in findings]
    targets = sorted({str(f.target) for f in findings if f.target is not None})
    lines.append(f"{len(findings)} of {checked} files and stores of {results} damaged, missing or incomplete")
    if targets:
        lines.append(f"to rebuild them run: {rebuild_command(targets, base)}")
    return 1, lines
