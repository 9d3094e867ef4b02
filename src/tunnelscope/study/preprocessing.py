"""A published model's own eval preprocessing, resolved without weights: timm's ``pretrained_cfg``
(as ``timm.data.resolve_model_data_config`` resolves it) or the ``transforms()`` of torchvision's
DEFAULT weights. Also the check that a timm/torchvision name exists.

The DAG needs these values (they decide the prepared-image store a cell reads) but must not import
torch: ``resolve`` asks a child process (``python -m tunnelscope.study.preprocessing ARCH...``)
once per set of library versions and keeps the answers in a small cache file.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path


class UnknownModel(ValueError):
    """A timm/torchvision name that the installed library does not know (one line, with the nearest)."""


def _nearest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f"; nearest: {', '.join(close)}" if close else ""


def check_name(arch: str) -> None:
    """Raise UnknownModel where ``timm/NAME[.TAG]`` or ``torchvision/NAME`` does not exist."""
    family, name = arch.split("/", 1)
    if family == "timm":
        import timm

        base, _, tag = name.partition(".")
        if not timm.is_model(base):
            raise UnknownModel(f"unknown timm model {base!r}{_nearest(base, timm.list_models())}")
        if tag:
            tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{base}.*")]
            if tag not in tags:
                raise UnknownModel(f"timm model {base!r} has no pretrained tag {tag!r}{_nearest(tag, tags)}")
        return
    import torchvision

    if name not in torchvision.models.list_models():
        raise UnknownModel(f"unknown torchvision model {name!r}{_nearest(name, torchvision.models.list_models())}")


def own_preprocessing(arch: str) -> dict:
    """The eval preprocessing ``arch`` declares (interpolation, crop_pct, mean, std, resolution,
    crop_mode); imports timm or torchvision."""
    check_name(arch)
    family, name = arch.split("/", 1)
    if family == "timm":
        from timm.data import resolve_data_config
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        data = resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg else {})
        return {
            "interpolation": data["interpolation"],
            "crop_pct": round(float(data["crop_pct"]), 4),
            "mean": [float(v) for v in data["mean"]],
            "std": [float(v) for v in data["std"]],
            "resolution": int(data["input_size"][-1]),
            "crop_mode": data.get("crop_mode", "center"),
        }
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except ValueError as exc:  # a builder without published weights
        raise UnknownModel(f"torchvision model {name!r} has no published weights ({exc})") from None
    transform = weights.transforms()
    crop, resize = transform.crop_size[0], transform.resize_size[0]
    return {
        "interpolation": transform.interpolation.value,
        "crop_pct": round(crop / resize, 4),
        "mean": [float(v) for v in transform.mean],
        "std": [float(v) for v in transform.std],
        "resolution": int(crop),
        "crop_mode": "center",
    }


def _answer(arch: str) -> dict:
    try:
        return own_preprocessing(arch)
    except UnknownModel as exc:
        return {"error": str(exc)}


def _cache_file() -> Path:
    """One file per timm/torchvision version pair, so an upgrade resolves again."""
    versions = "-".join(f"{lib}{_version(lib)}" for lib in ("timm", "torchvision"))
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tunnelscope" / f"preprocessing-{versions}.json"


def _version(lib: str) -> str:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return "none"


_MEMO: dict[str, dict] = {}


def resolve(archs: list[str]) -> dict[str, dict]:
    """``{arch: own preprocessing or {"error": one line}}`` for timm/torchvision names, without
    importing torch here (unless it already is): from memory, the cache file, else a child process."""
    todo = sorted(set(archs) - set(_MEMO))
    if todo:
        path = _cache_file()
        try:
            _MEMO.update({a: v for a, v in json.loads(path.read_text()).items() if a in todo})
        except (OSError, ValueError):
            pass
        todo = [a for a in todo if a not in _MEMO]
    if todo:
        if "torch" in sys.modules:
            found = {a: _answer(a) for a in todo}
        else:
            found = _ask_child(todo)
        _MEMO.update(found)
        _store(path, found)
    return {a: _MEMO[a] for a in archs}


def _ask_child(archs: list[str]) -> dict[str, dict]:
    run = subprocess.run(
        [sys.executable, "-m", "tunnelscope.study.preprocessing", *archs], capture_output=True, text=True
    )
    if run.returncode:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"resolving the preprocessing of {', '.join(archs)} failed: {last}")
    return json.loads(run.stdout)


def _store(path: Path, found: dict) -> None:
    """Merge ``found`` into the cache file (best effort: a read-only home only costs time)."""
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**old, **found}, sort_keys=True))
        tmp.replace(path)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    print(json.dumps({arch: _answer(arch) for arch in sys.argv[1:]}))
