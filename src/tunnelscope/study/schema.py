"""The config schema's mechanics: loading it (its enums filled from the registry), filling
defaults, and turning a schema violation into one line that names the offending key.

Torch-free: the Snakefile reads it while the DAG is built.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path

import jsonschema
import yaml

from tunnelscope import registry


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


def one_line(error: jsonschema.ValidationError) -> str:
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


def check_against(schema: dict, config: dict) -> None:
    """Raise ConfigError with the one line of the most specific violation of ``schema``, if any
    (not jsonschema's best_match, which splits anyOf alternatives)."""
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if errors:
        raise ConfigError(one_line(deepest_error(max(errors, key=lambda e: len(e.absolute_path)))))


def deepest_error(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
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


def fill_defaults(schema: dict, data, root: dict):
    """Insert schema defaults into ``data`` in place (objects only; not inside overrides)."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].split("/")[-1]]
    if not isinstance(data, dict):
        return
    for sub in schema.get("allOf", []):
        if _condition_holds(sub.get("if", {}), data):
            fill_defaults(sub.get("then", {}), data, root)
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
            fill_defaults(sub, data[key], root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in data:
            if key not in schema.get("properties", {}):
                fill_defaults(extra, data[key], root)


def _condition_holds(condition: dict, data: dict) -> bool:
    """Whether an if/then branch applies: every key its ``if`` names is present and the ``if``
    schema holds (a ``not``/``enum`` condition too, as the file sources' branch has)."""
    named = condition.get("properties", {})
    return all(k in data for k in named) and _validator(json.dumps(condition, sort_keys=True)).is_valid(data)


@functools.cache
def _validator(schema_json: str) -> jsonschema.Draft202012Validator:
    """One validator per ``if`` schema: building one costs about 0.2 ms, 60 of them per study."""
    return jsonschema.Draft202012Validator(json.loads(schema_json))


def section_settings(schema: dict, name: str, data: dict) -> dict:
    """One top-level section of a study config (``analysis``, ...) validated alone and with its
    defaults filled, as a study's would be; raise ConfigError naming ``NAME.key``."""
    section = {"$defs": schema["$defs"], "type": "object", "properties": {name: schema["properties"][name]}}
    config = {name: copy.deepcopy(data)}
    check_against(section, config)
    fill_defaults(section, config, section)
    return config[name]


def dataset_defaults(spec: dict) -> dict:
    """A copy of a dataset spec with its source's schema defaults filled in, as a study's are: the
    spec a library call (``data.prepare.prepare``) reads when it gets one written by hand."""
    spec = copy.deepcopy(spec)
    schema = _packaged_schema()
    fill_defaults(schema["$defs"]["dataset"], spec, schema)
    return spec


@functools.cache
def _packaged_schema() -> dict:
    return load_schema()  # read-only here: fill_defaults copies what it inserts


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
