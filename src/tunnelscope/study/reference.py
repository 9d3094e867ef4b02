"""docs/config.md, the config reference, generated from the schema: every key with its type, default,
allowed values and description. ``python -m tunnelscope.study.reference [OUT]`` writes it (stdout
without OUT); tests/test_docs.py checks the committed file equals what this produces."""

import json
import sys
from pathlib import Path

from tunnelscope.study.schema import load_schema

HEADER = """# Config reference

Generated from `src/tunnelscope/study/config.schema.yaml` by `python -m tunnelscope.study.reference
docs/config.md`; do not edit by hand (a test compares the two). Every key of a study config, with
its type, its default (filled in before validation) and, where the values are a fixed list, the
allowed ones. `NAME` stands for a name you choose (a dataset, a pretrained entry); `[]` for each
item of a list. Sections reached from several places (`model`, `training`, `probe`) are listed
once, at the top level.
"""


def _resolve(node: dict, schema: dict) -> dict:
    """A node with its ``$ref`` followed (the node's own keys, such as a description, win)."""
    if "$ref" not in node:
        return node
    target = schema
    for part in node["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    return {**_resolve(target, schema), **{k: v for k, v in node.items() if k != "$ref"}}


def _type(node: dict, schema: dict) -> str:
    node = _resolve(node, schema)
    for key in ("anyOf", "oneOf"):
        if key in node:
            return " or ".join(dict.fromkeys(_type(option, schema) for option in node[key]))
    kind = node.get("type")
    if kind == "array":
        return f"list of {_type(node.get('items', {}), schema)}" if node.get("items") else "list"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return "mapping"
    if kind is None:
        return "choice" if "enum" in node else "any"
    return " or ".join(kind) if isinstance(kind, list) else kind


def _choices(node: dict, schema: dict) -> list:
    node = _resolve(node, schema)
    found = list(node.get("enum", []))
    if isinstance(node.get("items"), dict):
        found += _choices(node["items"], schema)
    for key in ("anyOf", "oneOf"):
        for option in node.get(key, []):
            option = _resolve(option, schema)
            found += _choices(option, schema) + _choices(option.get("items", {}), schema)
    return list(dict.fromkeys(found))


def _description(node: dict, schema: dict) -> str:
    """The node's description, else those of the forms it may take (a list's items included)."""
    node = _resolve(node, schema)
    if "description" in node:
        return node["description"]
    options = node.get("anyOf", []) + node.get("oneOf", [])
    if isinstance(node.get("items"), dict):
        options += _resolve(node["items"], schema).get("anyOf", [])
    return "; ".join(d for d in (_resolve(o, schema).get("description") for o in options) if d)


def _branches(node: dict, schema: dict) -> list[tuple[str, dict]]:
    """A dataset's keys per source: each ``allOf`` if/then branch, labelled by its condition."""
    found = []
    for branch in node.get("allOf", []):
        source = branch["if"]["properties"]["source"]
        label = f"source {source['const']}" if "const" in source else "a source read from disk"
        found.append((label, branch["then"].get("properties", {})))
    return found


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(value) -> str:
    return "`" + json.dumps(value, ensure_ascii=False).replace("|", "\\|") + "`"


def _children(node: dict, schema: dict, prefix: str) -> list[tuple[str, dict]]:
    """The keys directly under ``node`` as (dotted path, schema node); a list's items as ``[]``."""
    node = _resolve(node, schema)
    children = dict(node.get("properties", {}))
    if isinstance(node.get("additionalProperties"), dict):
        children["NAME"] = node["additionalProperties"]
    for option in node.get("anyOf", []) + node.get("oneOf", []):  # a grid block or a list of blocks
        option = _resolve(option, schema)
        children = {**dict(option.get("properties", {})), **children}
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        children = {f"[]{'.' + k if k else ''}": v for k, v in _item_children(node["items"], schema).items()}
    return [
        (f"{prefix}.{key}" if prefix and not key.startswith("[]") else f"{prefix}{key}", child)
        for key, child in children.items()
    ]


def _homes(schema: dict) -> dict[str, str]:
    """Where each $ref'd section is expanded: the shallowest path that reaches it (top-level
    ``probe`` rather than ``overrides[].probe``), the first in schema order among equals."""
    homes, level = {}, [("", schema)]
    while level:
        below = []
        for prefix, node in level:
            for path, child in _children(node, schema, prefix):
                ref = child.get("$ref")
                if ref and ref in homes:
                    continue
                if ref:
                    homes[ref] = path
                below.append((path, child))
        level = below
    return homes


def _rows(node: dict, schema: dict, prefix: str, homes: dict) -> list[str]:
    """One table row per key under ``node``, depth first; each $ref'd section expanded at its home."""
    rows = []
    for path, child in _children(node, schema, prefix):
        home = homes.get(child.get("$ref"), path)
        if home == path:
            rows += [_row(path, child, schema), *_rows(child, schema, path, homes)]
        else:
            section = "properties" in _resolve(child, schema)  # a leaf (probe_points) needs no pointer
            rows.append(_row(path, child, schema, see=home if section else ""))
    for label, keys in _branches(_resolve(node, schema), schema):
        rows += [_row(f"{prefix}.{key}", child, schema, label) for key, child in keys.items() if child is not True]
    return rows


def _row(path: str, node: dict, schema: dict, scope: str = "", see: str = "") -> str:
    """A key's row; ``scope``: the dataset sources it applies to; ``see``: where its keys are listed."""
    full = _resolve(node, schema)
    default = _code(full["default"]) if "default" in full else ""
    values = ", ".join(f"`{c}`" for c in _choices(node, schema))
    text = (f"({scope}) " if scope else "") + _description(node, schema) + (f" The keys of `{see}`." if see else "")
    return f"| `{path}` | {_cell(_type(node, schema))} | {default} | {values} | {_cell(text)} |"


def _item_children(items: dict, schema: dict) -> dict:
    items = _resolve(items, schema)
    return dict(items.get("properties", {})) if items.get("type") == "object" else {}


def config_reference(schema: dict | None = None) -> str:
    schema = schema or load_schema()
    table = ["| key | type | default | values | description |", "|---|---|---|---|---|"]
    return (
        HEADER
        + "\n"
        + _cell(schema["description"])
        + "\n\n"
        + "\n".join(table + _rows(schema, schema, "", _homes(schema)))
        + "\n"
    )


def main(argv: list[str]) -> None:
    text = config_reference()
    if argv:
        Path(argv[0]).write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])
