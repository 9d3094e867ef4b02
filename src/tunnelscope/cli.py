"""Command-line entry point: ``tunnelscope validate | layers | best-layers | analyze | verify | adopt | profile install``.

Each subcommand is a module of ``tunnelscope.commands``: its help, its arguments and its run."""

from __future__ import annotations

import argparse
import sys

from tunnelscope import __version__
from tunnelscope.commands import adopt, analyze, best_layers, layers, profile, validate, verify

# Subcommand -> its module, in the order --help lists them.
SUBCOMMANDS = {
    "validate": validate,
    "layers": layers,
    "best-layers": best_layers,
    "analyze": analyze,
    "adopt": adopt,
    "verify": verify,
    "profile": profile,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunnelscope", description="Layer-wise OOD transfer of image networks.")
    parser.add_argument("--version", action="version", version=f"tunnelscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in SUBCOMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.HELP, description=command.DESCRIPTION))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return SUBCOMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
