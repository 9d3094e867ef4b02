"""A study config file as the subcommands read it: the study, or its one-line error printed."""

from __future__ import annotations

import sys

import yaml

from tunnelscope.study.config import Study
from tunnelscope.study.schema import ConfigError, load_schema


def read_study(path: str, schema: str) -> tuple[Study | None, int]:
    """(the study, 0), or (None, exit code) once its one-line error is printed."""
    try:
        with open(path) as fh:
            return Study(yaml.safe_load(fh), load_schema(schema)), 0
    except (OSError, yaml.YAMLError) as exc:
        print(f"tunnelscope: cannot read {path}: {exc}", file=sys.stderr)
        return None, 2
    except ConfigError as exc:
        print(f"tunnelscope: config error in {path}: {exc}", file=sys.stderr)
        return None, 1
