"""Command-line entry point: ``tunnelscope validate CONFIG``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from .config import ConfigError, Study, load_schema

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def _validate(args) -> int:
    try:
        with open(args.config) as fh:
            raw = yaml.safe_load(fh)
        study = Study(raw, load_schema(args.schema))
    except (OSError, yaml.YAMLError) as exc:
        print(f"tunnelscope: cannot read {args.config}: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"tunnelscope: config error in {args.config}: {exc}", file=sys.stderr)
        return 1
    n_eval = sum(len(study.eval_sets(c)) for c in study.cells)
    print(f"{args.config}: valid; {len(study.cells)} cells, {n_eval} probe jobs")
    for cid in sorted(study.cells):
        print(f"  {cid}: eval sets {', '.join(study.eval_sets(cid))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunnelscope", description="Layer-wise OOD transfer of image networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    val = sub.add_parser("validate", help="check a study config and list its cells")
    val.add_argument("config", help="YAML config file, e.g. config.yaml")
    val.add_argument("--schema", default=str(SCHEMA), help="JSON schema (default: the repository's)")
    val.set_defaults(func=_validate)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
