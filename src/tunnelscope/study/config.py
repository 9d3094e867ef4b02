"""Study configuration: validation, cell expansion and per-stage parameters.

Imported by the Snakefile while the DAG is built, so it must stay light: no torch, no data.
Every ``*_params`` function returns a plain, sorted, builtin-typed dict holding exactly the keys
that stage uses; the rules pass them as ``params`` so that Snakemake reruns a job exactly when a
setting that changes its result changes.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from tunnelscope import registry
from tunnelscope.registry import (
    ARCHS,
    CELL_VARIABLES,
    COMPOSED,
    DEFAULT_TRANSFORM,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MLP_FORMAT,
    PROBE_COMMON_KEYS,
    SOLVERS,
    TRAINED,
    arch_facts,
    cell_id,
    network_slug,
    parse_mlp,
    parse_python_arch,
    parse_transform_tag,
    transform_tag,
)
from tunnelscope.study import paths, preprocessing
from tunnelscope.study.paths import ResultsLayout

# SHAP's gradient-boosting fit needs this many (cell, OOD set) rows (analysis.comparisons.shap_slopes).
SHAP_MIN_ROWS = 3
# embed settings that change no embedding (how fast it is written, whether it is kept): left out
# of the embed jobs' params, so that changing them reruns nothing (study.manifest.NON_RESULT_KEYS).
EMBED_NON_RESULT_KEYS = ("batch_size", "keep")


class ConfigError(ValueError):
    """A config problem, described in one line that names the offending key."""


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


# What each propertyNames pattern of the schema asks for, in words (cell ids join names with "_").
NAME_RULE = "letters, digits and hyphens, starting with a letter; no underscores or other signs"


def _name_error(where: str, name: str) -> str:
    kind = {"datasets": "dataset names", "pretrained": "pretrained names"}.get(where, "names")
    fixed = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")
    hint = f": write {fixed}" if re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", fixed) else ""
    return f"{where}: {name!r} is not a valid name: {kind} are {NAME_RULE}{hint}"


def _one_line(error: jsonschema.ValidationError) -> str:
    where = _path(error.absolute_path)
    if error.validator == "pattern" and "propertyNames" in error.absolute_schema_path:
        return _name_error(where, error.instance)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"{where}: unknown key {', '.join(map(repr, extra))}{hint}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "anyOf":
        options = [str(v) for sub in error.validator_value for v in sub.get("enum", [])]
        options += [sub["description"] for sub in error.validator_value if "description" in sub]
        return f"{where}: {error.instance!r} is not one of {', '.join(options)}"
    return f"{where}: {error.message}"


def _deepest(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """The most specific error inside if/then and anyOf wrappers.

    For anyOf, branches whose type does not fit the value are ignored (all their errors); when
    only value checks (enum, pattern) remain, the anyOf error itself is kept so that all options
    get named.
    """
    while error.context:
        depth = len(error.absolute_path)
        mistyped = {
            e.relative_schema_path[0] for e in error.context if e.validator == "type" and len(e.absolute_path) == depth
        }
        relevant = [e for e in error.context if e.relative_schema_path[0] not in mistyped]
        if error.validator == "anyOf" and all(
            e.validator in ("enum", "pattern") and len(e.absolute_path) == depth for e in relevant
        ):
            break
        error = max(relevant or error.context, key=lambda e: len(e.absolute_path))
    return error


def _fill_defaults(schema: dict, data, root: dict):
    """Insert schema defaults into ``data`` in place (objects only; not inside overrides)."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].split("/")[-1]]
    if not isinstance(data, dict):
        return
    for sub in schema.get("allOf", []):
        if _condition_holds(sub.get("if", {}), data):
            _fill_defaults(sub.get("then", {}), data, root)
    for key, sub in schema.get("properties", {}).items():
        if key == "overrides":
            data.setdefault(key, [])
            continue
        if isinstance(sub, dict) and sub.get(
            "x-partial"
        ):  # settings over others, key by key: the given over the default's
            data[key] = {**copy.deepcopy(sub.get("default", {})), **data.get(key, {})}
            continue
        if key not in data and isinstance(sub, dict) and "default" in sub:
            data[key] = copy.deepcopy(sub["default"])
        if key in data and isinstance(sub, dict):
            _fill_defaults(sub, data[key], root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in data:
            if key not in schema.get("properties", {}):
                _fill_defaults(extra, data[key], root)


def _condition_holds(condition: dict, data: dict) -> bool:
    """Whether an if/then branch applies: every key its ``if`` names is present and the ``if``
    schema holds (a ``not``/``enum`` condition too, as the file sources' branch has)."""
    named = condition.get("properties", {})
    return all(k in data for k in named) and _validator(json.dumps(condition, sort_keys=True)).is_valid(data)


@functools.cache
def _validator(schema_json: str) -> jsonschema.Draft202012Validator:
    """One validator per ``if`` schema: building one costs about 0.2 ms, 60 of them per study."""
    return jsonschema.Draft202012Validator(json.loads(schema_json))


def section_defaults(schema: dict, name: str) -> dict:
    """Every default of one settings section of the schema (``training``, ``probe``, ...): the
    settings a library call outside a study starts from."""
    settings: dict = {}
    _fill_defaults(schema["$defs"][name], settings, schema)
    return settings


def section_settings(schema: dict, name: str, data: dict) -> dict:
    """One top-level section of a study config (``analysis``, ...) validated alone and with its
    defaults filled, as a study's would be; raise ConfigError naming ``NAME.key``."""
    section = {"$defs": schema["$defs"], "type": "object", "properties": {name: schema["properties"][name]}}
    config = {name: copy.deepcopy(data)}
    errors = list(jsonschema.Draft202012Validator(section).iter_errors(config))
    if errors:
        raise ConfigError(_one_line(_deepest(max(errors, key=lambda e: len(e.absolute_path)))))
    _fill_defaults(section, config, section)
    return config[name]


def dataset_defaults(spec: dict) -> dict:
    """A copy of a dataset spec with its source's schema defaults filled in, as a study's are: the
    spec a library call (``data.sources.prepare``) reads when it gets one written by hand."""
    spec = copy.deepcopy(spec)
    schema = _packaged_schema()
    _fill_defaults(schema["$defs"]["dataset"], spec, schema)
    return spec


@functools.cache
def _packaged_schema() -> dict:
    return load_schema()  # read-only here: _fill_defaults copies what it inserts


@dataclass(frozen=True)
class Backbone:
    """What a cell and a continual run share: the cell variables and the model and training recipe."""

    id: str
    arch: str
    id_dataset: str
    resolution: int
    augmentation: str
    seed: int
    model: dict
    training: dict

    @property
    def variables(self) -> dict:
        return {k: getattr(self, k) for k in CELL_VARIABLES}


@dataclass(frozen=True)
class Cell(Backbone):
    """One backbone of the grid: its variables, its resolved settings and its eval sets."""

    probe: dict
    ood_sets: tuple = ()
    pretrained: dict | None = None  # the pretrained entry of a published backbone


@dataclass(frozen=True)
class Run(Backbone):
    """One run of the continual-learning experiment; ``training`` is each task's."""

    finetune_training: dict  # the fine-tuning of the finetune configurations
    pretrained = None  # trained from scratch, never a published model


# The config schema ships inside the package, so an installed (non-editable) CLI finds it.
SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    """The config schema with every ``x-registry`` list filled in from the registry."""
    with open(path) as fh:
        return _fill_registry(yaml.safe_load(fh))


def registry_choices(name: str) -> list:
    """The names ``x-registry: NAME`` stands for: a registry constant (a dict gives its keys) or a
    dotted key of ``registry.SETTING_CHOICES``."""
    value = getattr(registry, name, None) if name.isupper() else registry.SETTING_CHOICES.get(name)
    if value is None:
        raise KeyError(f"schema: x-registry {name!r} names nothing in tunnelscope.registry")
    return list(value)


def _fill_registry(node):
    if isinstance(node, dict):
        if "x-registry" in node:
            node["enum"] = registry_choices(node["x-registry"])
        for value in node.values():
            _fill_registry(value)
    elif isinstance(node, list):
        for value in node:
            _fill_registry(value)
    return node


def validate(config: dict, schema: dict) -> dict:
    """Return a validated copy of ``config`` with defaults filled; raise ConfigError."""
    config = copy.deepcopy(config)
    if not isinstance(config, dict):
        raise ConfigError("<top level>: the config must be a mapping of keys to values")
    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.iter_errors(config))
    if errors:
        # The most specific error; not jsonschema's best_match, which splits anyOf alternatives.
        raise ConfigError(_one_line(_deepest(max(errors, key=lambda e: len(e.absolute_path)))))
    _fill_defaults(schema, config, schema)
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
        _fill_defaults(schema["$defs"]["grid_block"], block, schema)
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


_SOURCE_SHA256: dict[tuple, str] = {}


def source_sha256(path: str) -> str:
    """The sha256 of a python: model's file, read once per process and file state."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SOURCE_SHA256:
        _SOURCE_SHA256[key] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return _SOURCE_SHA256[key]


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
        _check_training(recipe, key)


def finetune_recipe(section: dict) -> dict:
    """The fine-tuning recipe of a continual section: its task recipe, finetune_training over it."""
    return {**section["training"], **section["finetune_training"]}


def _check_training(training: dict, key: str, where: str = "") -> None:
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


def _own_model(model: dict, arch: str, pretrained: dict | None, cid: str) -> dict:
    """A cell's model settings with what a python: model adds: its file's sha256 (so that editing
    the file reruns the stages that build it) and, in a grid cell, ``kwargs``. ``model.kwargs``
    is dropped from other cells (it changes nothing there) and from published backbones (their
    entry's kwargs, in the import params, are what their function gets)."""
    own = {k: v for k, v in model.items() if k != "kwargs"}
    source = pretrained["arch"] if pretrained else arch
    if parse_python_arch(source) is None:
        return own
    own["source_sha256"] = source_sha256(parse_python_arch(source)[0])
    if pretrained:
        return own
    if "num_classes" in model.get("kwargs", {}):
        raise ConfigError(f"cell {cid}: model.kwargs may not set num_classes; {arch} gets the ID set's class count")
    own["kwargs"] = dict(model.get("kwargs", {}))
    return own


def _same_level(a, b) -> bool:
    """Level equality; numbers within 0.1% (gamma is written to two decimals in configs)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-3)
    return str(a) == str(b)


class Study:
    """A validated config, expanded into cells (in grid order), with the parameters of every stage."""

    def __init__(self, config: dict, schema: dict):
        self.config = validate(config, schema)
        check_library_names(self.config)
        self.pretrained = resolve_pretrained(self.config)
        self.cells: dict[str, Cell] = {}
        for b, block in enumerate(self.config["grid"]):
            ood_sets = tuple(block.get("ood_sets", self.config.get("ood_sets", [])))
            for combo in itertools.product(*(block[k] for k in CELL_VARIABLES)):
                cell = self._cell(dict(zip(CELL_VARIABLES, combo)), ood_sets)
                if cell.id in self.cells:
                    raise ConfigError(f"grid[{b}]: duplicate cell {cell.id} (already defined by an earlier grid block)")
                self.cells[cell.id] = cell
        # the solver comparison sets every other solver against one reference
        firsts = {c.probe["solver"] for c in self.cells.values() if len(c.probe["solvers"]) > 1}
        if len(firsts) > 1:
            raise ConfigError(
                f"probe.solver: the cells with several solvers must list the same one first (the comparison's reference); overrides give {', '.join(sorted(firsts))}"
            )
        self.runs: dict[str, Run] = {}
        section = self.config.get("continual")
        if section:
            for combo in itertools.product(*(section[k] for k in CELL_VARIABLES)):
                variables = dict(zip(CELL_VARIABLES, combo))
                run = Run(
                    cell_id(**variables),
                    model=section["model"],
                    training=section["training"],
                    finetune_training=finetune_recipe(section),
                    **variables,
                )
                self.runs[run.id] = run

    def _cell(self, variables: dict, ood_sets: tuple) -> Cell:
        model = dict(self.config["model"])
        training = dict(self.config["training"])
        probe = copy.deepcopy(self.config["probe"])
        width_key = "model.width"
        for i, entry in enumerate(self.config["overrides"]):
            if all(variables[k] in (v if isinstance(v, list) else [v]) for k, v in entry["where"].items()):
                model.update(entry.get("model", {}))
                width_key = f"overrides[{i}].model.width" if "width" in entry.get("model", {}) else width_key
                training.update(entry.get("training", {}))
                for key, value in entry.get("probe", {}).items():
                    probe[key] = {**probe[key], **value} if key == "paper" else value
        probe.update(_solvers(probe))
        cid = cell_id(**variables)
        pretrained = self.pretrained.get(variables["arch"])
        built_as_published = pretrained or variables["arch"].startswith(PUBLISHED_PREFIXES)
        if built_as_published and model["width"] != 1.0:
            raise ConfigError(
                f"{width_key}: {model['width']} does not apply to {variables['arch']} (cell {cid}): timm, torchvision, python: and published models are built as defined; scope the width to the paper architectures with overrides"
            )
        model = _own_model(model, variables["arch"], pretrained, cid)
        if pretrained:
            model = {**model, "width": 1.0, "probe_points": pretrained["probe_points"]}
        facts = arch_facts(variables["arch"])
        if model.get("probe_points") == "activations" and facts is None:
            raise ConfigError(
                f"cell {cid}: model.probe_points activations is defined for the built-in architectures ({', '.join(ARCHS)}, MLPs), not {variables['arch']}"
            )
        if facts and facts["family"] == "mlp":
            if model["width"] != 1.0:
                raise ConfigError(
                    f"cell {cid}: model.width scales the channels of the CNNs and ViTs; an MLP's width is in its name ({MLP_FORMAT})"
                )
            if model.get("probe_points", "default") in ("blocks", "paper"):
                raise ConfigError(
                    f"cell {cid}: model.probe_points {model['probe_points']} is not defined for MLPs; use default (every hidden layer's output)"
                )
        _check_training(training, "training", f"cell {cid}: ")
        if probe["pooling"] not in self.config["embed"]["pooling"]:
            raise ConfigError(
                f"cell {cid}: overrides set probe.pooling {probe['pooling']!r}, which embed.pooling ({', '.join(self.config['embed']['pooling'])}) does not write"
            )
        return Cell(
            id=cid, model=model, training=training, probe=probe, ood_sets=ood_sets, pretrained=pretrained, **variables
        )

    @property
    def results(self) -> str:
        return self.config["results"]

    def eval_sets(self, cell: str) -> list[str]:
        """The ID set first, then every OOD set other than the ID set."""
        return [self.cells[cell].id_dataset, *self.ood_sets(cell)]

    def ood_sets(self, cell: str) -> list[str]:
        c = self.cells[cell]
        return [d for d in c.ood_sets if d != c.id_dataset]

    def shifted_sets(self, cell: str) -> list[str]:
        """OOD sets of a cell that are corrupted copies of its ID set: the zero-shot protocol's."""
        c, datasets = self.cells[cell], self.config["datasets"]
        return [d for d in self.ood_sets(cell) if datasets[d].get("of") == c.id_dataset]

    def solvers(self, cell: str) -> list[str]:
        return self.cells[cell].probe["solvers"]

    def trained_cells(self) -> list[str]:
        return sorted(c for c in self.cells if self.cells[c].pretrained is None)

    def pretrained_cells(self) -> list[str]:
        return sorted(c for c in self.cells if self.cells[c].pretrained is not None)

    def transform_tag(self, cell: str, dataset: str) -> str:
        """Tag of the prepared-image cache a cell reads ``dataset`` from."""
        return self._transform_tag(self.cells[cell], dataset)

    def _transform_tag(self, c: Cell | Run, dataset: str) -> str:
        if c.pretrained:
            return transform_tag(c.resolution, c.pretrained["interpolation"], c.pretrained["crop_pct"])
        native = (
            c.model["preprocessing"] == "dataset"
            and self.config["datasets"][dataset].get("native_resolution") == c.resolution
        )
        return transform_tag(c.resolution, native=native)

    def normalization(self, cell: str, dataset: str) -> dict | None:
        """Mean/std a trained cell normalises ``dataset`` with: the dataset's own where it declares
        them and the cell's ``model.preprocessing`` is ``dataset``, else ImageNet's. None for a
        published model, which uses its own (recorded in its checkpoint)."""
        return self._normalization(self.cells[cell], dataset)

    def _normalization(self, c: Cell | Run, dataset: str) -> dict | None:
        if c.pretrained:
            return None
        spec = self.config["datasets"][dataset]
        if c.model["preprocessing"] == "dataset" and "mean" in spec:
            return {"mean": list(spec["mean"]), "std": list(spec["std"])}
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}

    def prepared(self) -> list[tuple[str, str]]:
        """Every (dataset, transform tag) pair some cell or continual run needs."""
        needed = {(d, self.transform_tag(c, d)) for c in self.cells for d in self.eval_sets(c)}
        return sorted(needed | {(r.id_dataset, self._transform_tag(r, r.id_dataset)) for r in self.runs.values()})

    @property
    def paths(self) -> ResultsLayout:
        """Every file of the study under its results directory (study.paths)."""
        return ResultsLayout(self.results)

    def prepared_path(self, dataset: str, cell: str) -> str:
        return self.paths.path("prepared", dataset=dataset, transform=self.transform_tag(cell, dataset))

    def missing_roots(self, prepared_exists) -> list[str]:
        """One message per dataset whose root is missing while its cache still has to be built."""
        problems = []
        for name in sorted({d for d, _ in self.prepared()}):
            spec, key = self.config["datasets"][name], name
            if "base" in spec:  # a corrupted copy reads its clean set's files
                spec, key = spec["base"], spec["of"]
            pending = any(not prepared_exists(d, r) for d, r in self.prepared() if d == name)
            if "root" in spec and pending and not spec.get("download") and not Path(spec["root"]).is_dir():
                problems.append(
                    f"datasets.{key}.root: directory {spec['root']} not found"
                    + (f" (needed by {name})" if key != name else "")
                )
        return problems

    # --- per-stage params: exactly the keys the stage uses, sorted, builtin types ---

    def prepare_params(self, dataset: str, transform: str) -> dict:
        spec = self.config["datasets"][dataset]
        # mean/std are applied on the device later; they do not change the prepared images.
        spec = {k: v for k, v in spec.items() if k not in ("mean", "std")}
        params = {"dataset": dataset, **parse_transform_tag(transform), "spec": spec}
        root = spec.get("base", spec).get("root")
        if root:
            params["source_fingerprint"] = source_fingerprint(root)
        return _sorted(params)

    def pretrain_params(self, cell: str) -> dict:
        c = self.cells[cell]
        norm = self.normalization(cell, c.id_dataset)
        return _sorted(
            {**c.variables, "model": c.model, "training": c.training, "normalization": norm, "compute": self._compute()}
        )

    def import_params(self, cell: str) -> dict:
        c = self.cells[cell]
        return _sorted({**c.variables, "model": c.model, "pretrained": c.pretrained})

    def embed_params(self, cell: str, eval_set: str) -> dict:
        c = self.cells[cell]
        embed = {k: v for k, v in self.config["embed"].items() if k not in EMBED_NON_RESULT_KEYS}
        norm = self.normalization(cell, eval_set)
        return _sorted(
            {
                **c.variables,
                "model": c.model,
                "eval_set": eval_set,
                **embed,
                "normalization": norm,
                "compute": self._compute(),
            }
        )

    def _compute(self) -> dict:
        """Result-affecting compute settings (precision, channels_last, determinism on a GPU), as
        written: ``auto`` is resolved by each job, on its device (the DAG is built without torch),
        and recorded in its outputs. The device setting is not (the device a job used is recorded)."""
        return {k: self.config["compute"][k] for k in ("precision", "channels_last", "deterministic")}

    def probe_params(self, cell: str, eval_set: str, solver: str | None = None) -> dict:
        """Settings of one probe job; ``solver`` one of the cell's solvers (default the first)."""
        c = self.cells[cell]
        role = "id" if eval_set == c.id_dataset else "ood"
        probe = {**c.probe, "solver": solver or c.probe["solver"]}
        return _sorted({**c.variables, "eval_set": eval_set, "role": role, **_probe_settings(probe)})

    def zero_shot_params(self, cell: str, eval_set: str) -> dict:
        c = self.cells[cell]
        return _sorted({**c.variables, "eval_set": eval_set, "pooling": c.probe["pooling"], **self.config["zero_shot"]})

    def tsne_params(self, cell: str) -> dict:
        c = self.cells[cell]
        return _sorted({**c.variables, "pooling": c.probe["pooling"], **self.config["tsne"]})

    def layer_stats_params(self, cell: str) -> dict:
        c = self.cells[cell]
        return _sorted({**c.variables, "pooling": c.probe["pooling"], **self.config["layer_stats"]})

    def metrics_params(self, cell: str) -> dict:
        c = self.cells[cell]
        metrics = {k: v for k, v in self.config["metrics"].items() if k != "health"}  # health_params
        return _sorted({**c.variables, "ood_sets": self.ood_sets(cell), **metrics})

    def health_params(self) -> dict:
        """The training-health rule (metrics.health) of cell_metrics, best_layers and aggregate_cells."""
        return _sorted(self.config["metrics"]["health"])

    def untrained_params(self) -> dict:
        """Whether the study-level tables and figures keep untrained cells."""
        return {"include_untrained": self.config["analysis"]["include_untrained"]}

    # --- which study-level outputs the grid can fill (a lean study builds only those) ---

    def varying(self) -> list[str]:
        """Cell variables other than the seed with two or more levels among the cells: what the
        comparisons, SHAP and the curves by variable need (the architecture facts and class
        counts vary only with them)."""
        return [v for v in CELL_VARIABLES if v != "seed" and len({getattr(c, v) for c in self.cells.values()}) > 1]

    def backbones(self) -> int:
        """Distinct backbones: cells without their seed."""
        return len({tuple(getattr(c, v) for v in CELL_VARIABLES if v != "seed") for c in self.cells.values()})

    def metric_rows(self) -> int:
        """Rows of the metrics table: one per (cell, OOD set)."""
        return sum(len(self.ood_sets(c)) for c in self.cells)

    def builds(self, part: str) -> bool:
        """Whether the study-level ``part`` is built: "analysis" (SHAP, paired tests, level
        means, Tables 1/12/13, curves by variable), "shap_figure" or "strength_histogram"."""
        return not self._absence(part)

    def _absence(self, part: str) -> str:
        if part in ("analysis", "shap_figure") and not self.varying():
            cells = "the one cell" if len(self.cells) == 1 else f"the {len(self.cells)} cells"
            return f"no cell variable other than the seed has two levels among {cells}"
        if part == "shap_figure" and self.metric_rows() < SHAP_MIN_ROWS:
            return f"SHAP needs {SHAP_MIN_ROWS} or more (cell, OOD set) rows and the grid has {self.metric_rows()}"
        if part == "strength_histogram" and self.backbones() < 2:
            return "the study has one backbone"
        return ""

    def absent_parts(self) -> list[str]:
        """One line per study-level part the grid cannot fill, saying why (the report and the
        paper page show them)."""
        parts = {
            "analysis": "SHAP slopes, paired tests, level means (Tables 1, 12, 13) and curves by variable",
            "shap_figure": "the SHAP slopes figure",
            "strength_histogram": "the tunnel-strength histogram",
        }
        lines = []
        for part, what in parts.items():
            why = self._absence(part)
            if why and not (part == "shap_figure" and not self.builds("analysis")):
                lines.append(f"Not built: {what}: {why}.")
        return lines

    def best_layers_params(self, cell: str) -> dict:
        """The keys metrics.best_layers reads: the cell, its OOD sets, the tunnel rule and alpha."""
        c, metrics = self.cells[cell], self.config["metrics"]
        return _sorted(
            {**c.variables, "ood_sets": self.ood_sets(cell), **{k: metrics[k] for k in ("alpha", "tunnel_rule")}}
        )

    def analysis_params(self) -> dict:
        return _sorted(self.config["analysis"])

    # --- the continual-learning experiment (tunnelscope.protocols.continual) ---

    def continual_networks(self) -> list[tuple[str, str]]:
        """(directory name, table label) of every configuration, in the table's order."""
        labels = [*COMPOSED, *(e["name"] for e in self.config["continual"]["finetune"])] if self.runs else []
        return [(network_slug(label), label) for label in labels]

    def continual_label(self, network: str) -> str:
        return dict(self.continual_networks())[network]

    def continual_finetune(self, network: str) -> dict:
        """The finetune entry of a configuration's directory name."""
        return next(e for e in self.config["continual"]["finetune"] if network_slug(e["name"]) == network)

    def run_transform_tag(self, run: str) -> str:
        """The eval transform of a continual run's ID set (its prepared store's tag)."""
        r = self.runs[run]
        return self._transform_tag(r, r.id_dataset)

    def run_prepared_path(self, run: str) -> str:
        return self.paths.path("prepared", dataset=self.runs[run].id_dataset, transform=self.run_transform_tag(run))

    def _task(self, index: int) -> dict:
        section = self.config["continual"]
        return {"index": index, "classes": list(section["tasks"][index - 1]), "head": section["head"]}

    def _run_common(self, run: str) -> dict:
        r = self.runs[run]
        return {
            **r.variables,
            "model": r.model,
            "normalization": self._normalization(r, r.id_dataset),
            "compute": self._compute(),
        }

    def continual_train_params(self, run: str, network: str) -> dict:
        """Task 1 (E1+T1) or task 2 (E2+T2, from the E1+T1 weights)."""
        task = TRAINED[self.continual_label(network)]
        return _sorted({**self._run_common(run), "training": self.runs[run].training, "task": self._task(task)})

    def continual_finetune_params(self, run: str, network: str) -> dict:
        entry = self.continual_finetune(network)
        finetune = {
            "start": entry["start"],
            "train": sorted(entry["train"]),
            "freeze_norm_stats": self.config["continual"]["freeze_norm_stats"],
        }
        return _sorted(
            {
                **self._run_common(run),
                "training": self.runs[run].finetune_training,
                "task": self._task(entry["task"]),
                "finetune": finetune,
            }
        )

    def continual_swap_params(self, run: str) -> dict:
        section = self.config["continual"]
        r = self.runs[run]
        return _sorted(
            {
                **r.variables,
                "model": r.model,
                "side": self.config["embed"]["side"],
                "threshold": section["tunnel_threshold"],
                "curve": section["tunnel_curve"],
            }
        )

    def continual_evaluate_params(self, run: str, network: str) -> dict:
        """Embed settings, the probe's, and per task which layers: every layer where the network
        gives its own task's ID curve (E1+T1 on task 1, E2+T2 on task 2), else the last."""
        own = TRAINED.get(self.continual_label(network))
        embed = {k: v for k, v in self.config["embed"].items() if k not in EMBED_NON_RESULT_KEYS}
        probe = self.config["probe"]
        probe = _probe_settings({**probe, **_solvers(probe)})
        layers = {str(t): "all" if t == own else "last" for t in (1, 2)}
        return _sorted(
            {
                **self._run_common(run),
                **embed,
                "probe": probe,
                "tasks": self.config["continual"]["tasks"],
                "layers": layers,
                "network": self.continual_label(network),
            }
        )

    def continual_table_params(self) -> dict:
        section = self.config["continual"]
        runs = {run: r.variables for run, r in self.runs.items()}
        return _sorted(
            {"score": section["score"], "networks": [list(n) for n in self.continual_networks()], "runs": runs}
        )

    def seed_params(self) -> dict:
        """What the seed summaries of the aggregate, tables and figures read."""
        return {"confidence": self.config["analysis"]["seed_confidence"]}

    def mlp_cells(self) -> list[str]:
        """Cells of MLP backbones, in grid order: what the tunnel-length figure plots."""
        return [c for c, cell in self.cells.items() if cell.pretrained is None and parse_mlp(cell.arch) is not None]

    def tunnel_length_params(self) -> dict:
        return _sorted(self.config["tunnel_length"])


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


def _solvers(probe: dict) -> dict:
    """probe.solver is one solver or a list: ``solvers`` all of them, ``solver`` the first, which
    drives the metrics."""
    solvers = list(probe["solver"]) if isinstance(probe["solver"], list) else [probe["solver"]]
    return {"solvers": solvers, "solver": solvers[0]}


def _probe_settings(probe: dict) -> dict:
    """The probe keys ``probe["solver"]`` reads (registry.SOLVERS); its own seed as
    ``probe_seed``, since "seed" is the cell's."""
    used = (*PROBE_COMMON_KEYS, *SOLVERS[probe["solver"]])
    return {("probe_seed" if k == "seed" else k): probe[k] for k in used}


def _sorted(value):
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_sorted(v) for v in value]
    return value
