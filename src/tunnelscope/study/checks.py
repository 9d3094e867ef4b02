"""validate: a config checked against the schema, then across keys (datasets, OOD sets,
comparisons, published models, continual learning, the results directory), each problem one
line naming its key, before any job runs. Torch-free.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

from tunnelscope.registry import (
    ARCHS,
    CELL_VARIABLES,
    COMPOSED,
    DEFAULT_TRANSFORM,
    arch_facts,
    network_slug,
    parse_mlp,
    parse_python_arch,
)
from tunnelscope.study import paths, preprocessing
from tunnelscope.study.schema import ConfigError, check_against, fill_defaults


def validate(config: dict, schema: dict) -> dict:
    """Return a validated copy of ``config`` with defaults filled; raise ConfigError."""
    config = copy.deepcopy(config)
    if not isinstance(config, dict):
        raise ConfigError("<top level>: the config must be a mapping of keys to values")
    check_against(schema, config)
    fill_defaults(schema, config, schema)
    embed = config["embed"]
    if isinstance(embed["pooling"], str):
        embed["pooling"] = [embed["pooling"]]
    probe = config["probe"]
    probe.setdefault("pooling", embed["pooling"][0])
    if probe["pooling"] not in embed["pooling"]:
        raise ConfigError(
            f"probe.pooling: {probe['pooling']!r} is not written by embed.pooling ({', '.join(embed['pooling'])})"
        )
    if "grid" not in config and "continual" not in config:
        raise ConfigError("grid: missing; a study needs a grid of cells, a continual section, or both")
    grid = config.get("grid", [])
    blocks = grid if isinstance(grid, list) else [grid]
    for block in blocks:
        fill_defaults(schema["$defs"]["grid_block"], block, schema)
    config["grid"] = blocks
    config["results"] = os.path.expanduser(config["results"])  # as a shell would; never a folder named ~
    _check_results(config["results"])
    _check_pretrained(config["pretrained"])
    _check_datasets(config["datasets"])
    names = set(config["datasets"])
    defined = ", ".join(sorted(names))
    for b, block in enumerate(blocks):
        where = f"grid[{b}]" if len(blocks) > 1 else "grid"
        for i, arch in enumerate(block["arch"]):
            if arch.startswith("python:"):
                _check_python_file(arch, f"{where}.arch[{i}]")
                continue
            if arch in config["pretrained"] or "/" in arch:
                continue
            try:
                parse_mlp(arch)
            except ValueError as exc:
                raise ConfigError(f"{where}.arch[{i}]: {exc}") from None
            if arch_facts(arch) is None:
                known = ", ".join(
                    [*ARCHS, "mlpDEPTH-wWIDTH", "timm/NAME", "torchvision/NAME", "python:FILE.py:FUNCTION"]
                )
                named = ", ".join(sorted(config["pretrained"])) or "none defined"
                raise ConfigError(
                    f"{where}.arch[{i}]: {arch!r} is not one of {known} or a name under pretrained ({named})"
                )
        for i, name in enumerate(block["id_dataset"]):
            if name not in names:
                raise ConfigError(f"{where}.id_dataset[{i}]: unknown dataset {name!r}; defined: {defined}")
        if "ood_sets" not in block and "ood_sets" not in config:
            raise ConfigError(f"{where}: no ood_sets, neither in the block nor at the top level")
        for prefix, ood in ((f"{where}.", block.get("ood_sets")), ("", config.get("ood_sets"))):
            for i, name in enumerate(ood or []):
                if name not in names:
                    raise ConfigError(f"{prefix}ood_sets[{i}]: unknown dataset {name!r}; defined: {defined}")
        _check_ood_not_id(block, where, config)
    for i, entry in enumerate(config["overrides"]):
        for key, value in entry["where"].items():
            levels = [v for block in blocks for v in block[key]]
            for one in value if isinstance(value, list) else [value]:
                if one not in levels:
                    raise ConfigError(
                        f"overrides[{i}].where.{key}: {one!r} matches no cell; grid levels: {', '.join(map(str, dict.fromkeys(levels)))}"
                    )
    _check_comparisons(config["analysis"]["comparisons"], blocks)
    if "continual" in config:
        _check_continual(config["continual"], config["datasets"])
    thresholds = config["metrics"]["id_start_thresholds"]
    if not any(math.isclose(config["tunnel_length"]["threshold"], t) for t in thresholds):
        raise ConfigError(
            f"tunnel_length.threshold: {config['tunnel_length']['threshold']} is not one of metrics.id_start_thresholds ({', '.join(map(str, thresholds))})"
        )
    return config


# Keys of a dataset spec that leave its test images as they are: normalisation, storage, and
# per_class, which thins the train split only.
SAME_TEST_IMAGES_KEYS = ("mean", "std", "native_resolution", "download", "on_bad_image", "per_class", "base")


def _same_test_images(a: dict, b: dict) -> bool:
    """Whether two dataset specs hold the same test images: same source, root and every other
    selecting setting. Specs that share a source and root but select other classes (a class
    subset, a class list) or another split hold other images, and may be one cell's ID and OOD
    sets (a near-OOD design)."""

    def selection(spec: dict) -> dict:
        kept = {k: v for k, v in spec.items() if k not in SAME_TEST_IMAGES_KEYS}
        if "root" in kept:
            kept["root"] = os.path.normpath(kept["root"])
        return kept

    return selection(a) == selection(b)


def _check_ood_not_id(block: dict, where: str, config: dict) -> None:
    """No cell of ``block`` probes its ID set, or its test images under another name, as an OOD
    set: such a set was left out of the cell's eval sets, and cell_metrics failed on it after
    the whole chain had run."""
    own = "ood_sets" in block
    ood_sets, key = (block["ood_sets"], f"{where}.ood_sets") if own else (config["ood_sets"], "ood_sets")
    datasets = config["datasets"]
    for j, id_set in enumerate(block["id_dataset"]):
        for i, name in enumerate(ood_sets):
            if name == id_set:
                same = f"is the ID set of {where}.id_dataset[{j}]"
            elif _same_test_images(datasets[name], datasets[id_set]):
                same = f"holds the same test images as {id_set!r}, the ID set of {where}.id_dataset[{j}] (same source and selection)"
            else:
                continue
            fix = "remove it" if own else f"remove it, or give {where} its own ood_sets"
            raise ConfigError(f"{key}[{i}]: {name!r} {same}; an OOD set must differ from the ID set: {fix}")


# Files that mark a directory as a study's results (a prepared store, a cell): another study's
# results must not be written inside it.
RESULTS_MARKERS = (
    paths.relative("prepared_manifest", dataset="*", transform="*"),
    paths.relative("cell_info", cell="*"),
)


def _check_results(results: str) -> None:
    """``results`` is a directory of the study's own: not the filesystem root, the home directory
    or a directory above it, a workflow's directory (the repository root holds the Snakefile), or
    a directory inside another study's results."""
    path = Path(results).resolve()
    named = results if Path(results) == path else f"{results} ({path})"
    advice = "give a directory of the study's own, e.g. results-NAME"
    if path == Path(path.anchor):
        raise ConfigError(f"results: {named} is the filesystem root; {advice}")
    home = _home()
    if home is not None and (path == home or path in home.parents):
        where = "the home directory" if path == home else f"above the home directory {home}"
        raise ConfigError(f"results: {named} is {where}; {advice}")
    if (path / "Snakefile").is_file():
        raise ConfigError(
            f"results: {named} is a workflow's directory, such as the repository root (it holds a Snakefile); {advice}"
        )
    for parent in path.parents:
        marker = next(
            (
                m
                for pattern in RESULTS_MARKERS
                if (parent / pattern.split("/")[0]).is_dir()
                for m in parent.glob(pattern)
            ),
            None,
        )
        if marker is not None:
            raise ConfigError(
                f"results: {named} is inside {parent}, the results directory of another study (it holds {marker.relative_to(parent)}); {advice} outside it"
            )


def _home() -> Path | None:
    try:
        return Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no passwd entry
        return None


def _check_python_file(arch: str, key: str) -> None:
    """A python:FILE.py:FUNCTION architecture names a file that exists (the function is checked
    when the model is built, which needs torch)."""
    path, _ = parse_python_arch(arch)
    if not Path(path).is_file():
        raise ConfigError(
            f"{key}: {arch}: file {path} not found (relative paths start at the working directory {Path.cwd()})"
        )


# Training images of a timm/torchvision checkpoint unless its entry says otherwise: ImageNet-1K's.
IMAGENET1K_TRAIN = 1281167


def _check_pretrained(entries: dict) -> None:
    for name, spec in entries.items():
        if spec["arch"].startswith("python:"):
            _check_python_file(spec["arch"], f"pretrained.{name}.arch")
            if "n_train" not in spec:  # no library default to assume: gamma would be made up
                raise ConfigError(
                    f"pretrained.{name}.n_train: give the number of images {spec.get('weights') or 'its checkpoint'} was trained on (gamma = parameters / n_train); a python: model has no default"
                )
            if not spec.get("weights") or spec.get("hf_cache") or spec["download"]:
                raise ConfigError(
                    f"pretrained.{name}: a python: arch loads its weights from weights (a local file) only, not hf_cache or download"
                )
        elif "kwargs" in spec:
            raise ConfigError(f"pretrained.{name}.kwargs: only a python:FILE.py:FUNCTION arch takes kwargs")
        spec.setdefault("n_train", IMAGENET1K_TRAIN)
        if not (spec.get("weights") or spec.get("hf_cache") or spec["download"]):
            raise ConfigError(
                f"pretrained.{name}: give weights (a local file), hf_cache (a local Hugging Face cache) or download: true"
            )
        if spec.get("hf_cache") and not spec["arch"].startswith("timm/"):
            raise ConfigError(
                f"pretrained.{name}.hf_cache: only timm models load from a Hugging Face cache; use weights for {spec['arch']}"
            )


def _check_datasets(datasets: dict) -> None:
    for name, spec in datasets.items():
        if ("mean" in spec) != ("std" in spec):
            given, missing = ("mean", "std") if "mean" in spec else ("std", "mean")
            raise ConfigError(f"datasets.{name}: {given} is given without {missing}; give both or neither")
    for name, spec in datasets.items():
        if spec["source"] == "corrupted":
            _resolve_corrupted(name, spec, datasets)


def _resolve_corrupted(name: str, spec: dict, datasets: dict) -> None:
    """A corrupted copy holds its base set's spec (what prepare reads, and what its store's
    fingerprint covers) and inherits its native resolution and statistics."""
    base = datasets.get(spec["of"])
    if base is None:
        raise ConfigError(f"datasets.{name}.of: unknown dataset {spec['of']!r}; defined: {', '.join(sorted(datasets))}")
    if base["source"] == "corrupted":
        raise ConfigError(f"datasets.{name}.of: {spec['of']!r} is itself a corrupted copy; name its clean set")
    spec["base"] = {k: v for k, v in base.items() if k not in ("mean", "std")}
    for key in ("native_resolution", "mean", "std"):
        if key in base:
            spec.setdefault(key, base[key])


def _check_comparisons(comparisons, blocks: list[dict]) -> None:
    """Levels of cell variables (and of architecture facts, when every arch is a paper one) must
    occur in the grid, so a typo fails before any job instead of giving an empty comparison."""
    if comparisons == "auto":
        return
    grid = {k: {v for block in blocks for v in block[k]} for k in CELL_VARIABLES}
    if all(arch_facts(a) is not None for a in grid["arch"]):
        grid |= {
            k: {arch_facts(a)[k] for a in grid["arch"]}
            for k in ("family", "arch_family", "stem", "spatial_reduction", "depth")
        }
    seen = set()
    for i, entry in enumerate(comparisons):
        where = f"analysis.comparisons[{i}]"
        if entry["name"] in seen:
            raise ConfigError(f"{where}.name: {entry['name']!r} is used by an earlier comparison")
        seen.add(entry["name"])
        known = grid.get(entry["variable"])
        values = [(f"{where}.levels[{j}]", v) for j, v in enumerate(entry.get("levels", []))]
        values += [
            (f"{where}.pairs[{j}][{k}]", v) for j, pair in enumerate(entry.get("pairs", [])) for k, v in enumerate(pair)
        ]
        for key, value in values:
            if known is not None and not any(_same_level(value, k) for k in known):
                raise ConfigError(
                    f"{key}: {value!r} is not a {entry['variable']} of any cell; grid levels: {', '.join(map(str, sorted(known, key=str)))}"
                )
        if entry.get("levels") and entry.get("pairs"):
            for j, pair in enumerate(entry["pairs"]):
                for k, value in enumerate(pair):
                    if not any(_same_level(value, lv) for lv in entry["levels"]):
                        raise ConfigError(f"{where}.pairs[{j}][{k}]: {value!r} is not one of the comparison's levels")
        for key, values in entry.get("where", {}).items():
            for j, value in enumerate(values):
                if key in grid and not any(_same_level(value, k) for k in grid[key]):
                    raise ConfigError(
                        f"{where}.where.{key}[{j}]: {value!r} matches no cell; grid levels: {', '.join(map(str, sorted(grid[key], key=str)))}"
                    )


# Architectures built by another library or file, whose width is their own.
PUBLISHED_PREFIXES = ("timm/", "torchvision/", "python:")


def check_library_names(config: dict) -> None:
    """Every timm/torchvision name of the grid and of the pretrained entries must exist (one line
    naming its key, with the nearest names), so a typo fails the dry run and validate, not a job;
    answered from preprocessing's cache."""
    named = {f"pretrained.{name}.arch": spec["arch"] for name, spec in config["pretrained"].items()}
    blocks = config["grid"]
    for b, block in enumerate(blocks):
        where = f"grid[{b}]" if len(blocks) > 1 else "grid"
        named |= {
            f"{where}.arch[{i}]": arch for i, arch in enumerate(block["arch"]) if arch not in config["pretrained"]
        }
    named = {key: arch for key, arch in named.items() if arch.startswith(("timm/", "torchvision/"))}
    found = preprocessing.resolve(sorted(set(named.values()))) if named else {}
    for key, arch in named.items():
        if "error" in found[arch]:
            raise ConfigError(f"{key}: {found[arch]['error']}")


def resolve_pretrained(config: dict) -> dict[str, dict]:
    """The grid's pretrained entries with interpolation and crop_pct filled in (and mean/std
    where the model's own were resolved): the entry's, else the model's own (``preprocessing:
    model``, resolved by tunnelscope.study.preprocessing) or the paper's (``preprocessing: paper``)."""
    used = {a for block in config["grid"] for a in block["arch"]}
    entries = {name: spec for name, spec in config["pretrained"].items() if name in used}
    need = [
        s["arch"]
        for s in entries.values()
        if s["preprocessing"] == "model"
        and not {"interpolation", "crop_pct"} <= set(s)
        and parse_python_arch(s["arch"]) is None  # a python: model declares none: the paper's
    ]
    own = preprocessing.resolve(need) if need else {}
    resolved = {}
    for name, spec in entries.items():
        if spec["arch"] in own:  # its name exists: check_library_names ran first
            found = own[spec["arch"]]
            spec = {
                **{k: found[k] for k in ("interpolation", "crop_pct")},
                **spec,
                "mean": spec["mean"] or found["mean"],
                "std": spec["std"] or found["std"],
            }
        resolved[name] = {**DEFAULT_TRANSFORM, **spec}
    return resolved


def known_classes(spec: dict) -> int | None:
    """The class count of a dataset spec where it follows from the spec alone, else None."""
    spec = spec.get("base", spec)
    if spec["source"] == "synthetic":
        return spec["classes"]
    if spec["source"] == "sklearn_digits":
        return 10
    if spec["source"] == "imagenet100" and "class_list" not in spec:
        return min(spec.get("first_classes", 100), len(spec.get("classes", range(100))))
    return None


def _check_continual(section: dict, datasets: dict) -> None:
    for i, name in enumerate(section["id_dataset"]):
        if name not in datasets:
            raise ConfigError(
                f"continual.id_dataset[{i}]: unknown dataset {name!r}; defined: {', '.join(sorted(datasets))}"
            )
    (a, b), (c, d) = section["tasks"]
    for t, (first, stop) in enumerate(section["tasks"]):
        if first >= stop:
            raise ConfigError(
                f"continual.tasks[{t}]: [{first}, {stop}] holds no class; give [first, stop) with first < stop"
            )
    if a < d and c < b:
        raise ConfigError(f"continual.tasks[1]: [{c}, {d}] overlaps task 1's classes [{a}, {b}]")
    for i, name in enumerate(section["id_dataset"]):
        count = known_classes(datasets[name])
        if count is not None and max(b, d) > count:
            raise ConfigError(
                f"continual.tasks: classes up to {max(b, d)}, but continual.id_dataset[{i}] {name!r} has {count}"
            )
    reserved = {network_slug(n): n for n in COMPOSED}
    for i, entry in enumerate(section["finetune"]):
        entry.setdefault("task", 1)
        slug = network_slug(entry["name"])
        if slug in reserved:
            raise ConfigError(
                f"continual.finetune[{i}].name: {entry['name']!r} is taken (by {reserved[slug]!r}); names must differ in their letters and digits"
            )
        reserved[slug] = entry["name"]
    for key, recipe in (
        ("continual.training", section["training"]),
        ("continual.finetune_training", finetune_recipe(section)),
    ):
        check_training(recipe, key)


def finetune_recipe(section: dict) -> dict:
    """The fine-tuning recipe of a continual section: its task recipe, finetune_training over it."""
    return {**section["training"], **section["finetune_training"]}


def check_training(training: dict, key: str, where: str = "") -> None:
    """Cross-key checks of one training recipe, the section ``key`` (``where`` says whose)."""
    if training["checkpoint"] == "best_val" and training["val_fraction"] == 0:
        raise ConfigError(f"{where}{key}.checkpoint best_val needs a validation split ({key}.val_fraction > 0)")
    if training["schedule"] == "step":
        milestones = training["step_milestones"]
        if milestones != sorted(milestones):
            raise ConfigError(f"{where}{key}.step_milestones: {milestones} is not increasing")
        if any(m <= training["warmup_epochs"] or m >= training["epochs"] for m in milestones):
            raise ConfigError(
                f"{where}{key}.step_milestones: {milestones} must lie after the warm-up ({training['warmup_epochs']} epochs) and before the last of the {training['epochs']} epochs"
            )


def _same_level(a, b) -> bool:
    """Level equality; numbers within 0.1% (gamma is written to two decimals in configs)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-3)
    return str(a) == str(b)
