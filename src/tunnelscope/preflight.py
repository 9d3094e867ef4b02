"""validate's checks that need the files or a built model, beyond the config itself: dataset
roots, OOD sets that hold a cell's own training images, published weights, eval-transform
settings of published models, patch grids too small to probe. Each a warning line naming its key.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from tunnelscope.budget import CellBudget
from tunnelscope.data.sources import load_source
from tunnelscope.data.store import DatasetError
from tunnelscope.registry import IMAGENET_MEAN, IMAGENET_STD
from tunnelscope.study.config import Study


def data_warnings(study: Study, sizes: dict) -> list[str]:
    """One line per dataset whose files are not there (yet), naming its root: the run stops
    before any job until they are, and the budget falls back on published sizes."""
    out, seen = [], set()
    for name in sorted(sizes):
        spec, key = study.config["datasets"][name], name
        if "base" in spec:  # a corrupted copy reads its clean set's files
            spec, key = spec["base"], spec["of"]
        if "root" not in spec or key in seen or (sizes[name] and sizes[name][2]):
            continue
        seen.add(key)
        root = Path(spec["root"])
        fallback = "published sizes used" if sizes[name] else "no published size: no estimate"
        if not root.is_dir():
            fetch = "; download: true fetches it when preparing" if spec.get("download") else ""
            out.append(f"datasets.{key}.root: directory {root} not found ({fallback}){fetch}")
            continue
        try:
            load_source({**spec, "download": False})
            continue
        except (DatasetError, OSError) as exc:
            out.append(f"datasets.{key}.root: {exc} ({fallback})")
    return out


def shared_training_images(study: Study, cell: str, ood_set: str, listings: dict | None = None) -> set:
    """Files of ``cell``'s ID train split that the probe of ``ood_set`` also trains on (a corrupted
    copy: its clean set's train split), from the file listings alone: empty where the two read
    different roots, or their files are not there (yet) or are not files (arrays). ``listings``:
    dataset name -> its train files, filled as read, so that a caller checking many pairs lists
    each tree once (an ImageNet listing takes seconds)."""
    listings = {} if listings is None else listings

    def files(name: str) -> set | None:
        if name not in listings:
            listings[name] = _train_files(_files_spec(study, name))
        return listings[name]

    id_set = study.cells[cell].id_dataset
    a, b = (Path(os.path.normpath(_files_spec(study, d).get("root", ""))) for d in (id_set, ood_set))
    if not (a == b or a in b.parents or b in a.parents):
        return set()  # separate trees share no file
    own, probed = files(id_set), files(ood_set)
    return own & probed if own and probed else set()


def _train_files(spec: dict) -> set | None:
    """The image files of a dataset's train split; None where it is not read from files or they
    are not there."""
    if "root" not in spec:
        return None
    try:
        items = load_source({**spec, "download": False})["train"].items
    except (DatasetError, OSError):
        return None
    return set(items) if items and isinstance(items[0], Path) else None


def _files_spec(study: Study, name: str) -> dict:
    """The spec whose files ``name`` reads: its own, or a corrupted copy's clean set's."""
    spec = study.config["datasets"][name]
    return spec.get("base", spec)


def training_overlap_warnings(study: Study) -> list[str]:
    """One line per (ID set, OOD set) whose OOD probe trains on images the cell's backbone trained
    on: a noisy copy of the ID set itself, or a set drawn from the same train images. Such a set
    is near-ID, not OOD. A warning, not an error: the zero-shot protocol scores
    corrupted copies of the ID set on their test split only, as it should."""
    out, seen, listings = [], set(), {}
    for cid in study.trained_cells():
        for ood_set in study.ood_sets(cid):
            key = (study.cells[cid].id_dataset, ood_set)
            if key in seen:
                continue
            seen.add(key)
            if shared := shared_training_images(study, cid, ood_set, listings):
                out.append(
                    f"ood_sets: {ood_set!r} trains its probe on {len(shared)} images that the backbones on "
                    f"{key[0]!r} trained on (cell {cid}): a near-ID set, not OOD; build it from other images, "
                    "e.g. a test tree read with layout: single"
                )
    return out


def weights_warnings(study: Study) -> list[str]:
    """One line per published model of the grid whose weights are not where its entry says (the
    run stops at its import job until they are)."""
    out = []
    for name, spec in study.pretrained.items():
        if spec.get("weights") and not Path(spec["weights"]).is_file():
            out.append(f"pretrained.{name}.weights: file {spec['weights']} not found")
        elif spec.get("hf_cache") and not spec.get("weights") and not Path(spec["hf_cache"]).is_dir():
            fetch = "; download: true fetches the weights" if spec["download"] else ""
            out.append(f"pretrained.{name}.hf_cache: directory {spec['hf_cache']} not found{fetch}")
    return out


def preprocessing_report(study: Study) -> tuple[list[str], list[str]]:
    """(one line per published model: each eval-transform setting and where it came from;
    warnings where a setting differs from what the model itself declares, naming the key to set)."""
    from tunnelscope.study.preprocessing import resolve

    lines, warnings = [], []
    own = resolve(sorted({s["arch"] for s in study.pretrained.values() if not s["arch"].startswith("python:")}))
    resolutions = {
        name: sorted({c.resolution for c in study.cells.values() if c.arch == name}) for name in study.pretrained
    }
    for name, used in study.pretrained.items():
        entry, model = study.config["pretrained"][name], own.get(used["arch"])
        if model is None:  # a python: model declares no preprocessing of its own
            lines.append(_own_model_line(name, used, entry, resolutions[name]))
            continue
        fallback = "paper" if entry["preprocessing"] == "paper" else "model's own"
        parts = []
        for key in ("interpolation", "crop_pct"):
            parts.append(f"{key} {used[key]:g} " if key == "crop_pct" else f"{key} {used[key]} ")
            parts[-1] += "(entry)" if key in entry else f"({fallback})"
        given = entry["mean"] is not None
        parts.append(
            "mean/std "
            + (
                "(entry)"
                if given
                else f"{_triple(used['mean'] or model['mean'])} / {_triple(used['std'] or model['std'])} (model's own)"
            )
        )
        parts.append(f"resolution {', '.join(map(str, resolutions[name]))} (grid)")
        lines.append(f"  {name} ({used['arch']}, preprocessing {entry['preprocessing']}): {', '.join(parts)}")
        for key in ("interpolation", "crop_pct"):
            if used[key] != model[key] and not (
                key == "crop_pct" and math.isclose(used[key], model[key], abs_tol=1e-3)
            ):
                advice = f"set pretrained.{name}.{key}" + (" or preprocessing: model" if key not in entry else "")
                warnings.append(
                    f"pretrained.{name}.{key}: {used[key]} ({'entry' if key in entry else fallback}) differs from {model[key]}, what {used['arch']} declares; {advice} to match"
                )
        other = [r for r in resolutions[name] if r != model["resolution"]]
        if other:
            warnings.append(
                f"grid.resolution: {name} runs at {', '.join(map(str, other))} px, the model's own input size is {model['resolution']}"
            )
        if model["crop_mode"] != "center":
            warnings.append(
                f"pretrained.{name}: the model's own crop_mode {model['crop_mode']!r} is not reproduced; its eval sets are centre-cropped"
            )
    return lines, warnings


def _own_model_line(name: str, used: dict, entry: dict, resolutions: list[int]) -> str:
    """The preprocessing line of a python: model, which declares none: the paper's eval transform
    and ImageNet's mean/std where the entry gives none."""
    parts = [
        f"interpolation {used['interpolation']} ({'entry' if 'interpolation' in entry else 'paper'})",
        f"crop_pct {used['crop_pct']:g} ({'entry' if 'crop_pct' in entry else 'paper'})",
        "mean/std (entry)"
        if entry["mean"] is not None
        else f"mean/std {_triple(IMAGENET_MEAN)} / {_triple(IMAGENET_STD)} (ImageNet's)",
        f"resolution {', '.join(map(str, resolutions))} (grid)",
    ]
    return f"  {name} ({used['arch']}, declares no preprocessing): {', '.join(parts)}"


def _triple(values) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def patch_warnings(study: Study, budgets: list[CellBudget]) -> list[str]:
    """Patch models whose token grid at the cell's resolution is smaller than 4x4."""
    return [
        f"grid.resolution: {b.arch} at {study.cells[b.cell].resolution} px sees a {b.patch_grid}x{b.patch_grid} patch grid (cell {b.cell}), fewer than 4x4 tokens"
        for b in budgets
        if b.patch_grid is not None and b.patch_grid < 4
    ]
