"""``tunnelscope verify``: every file a study wrote against its checksum."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunnelscope.commands.study_file import read_study
from tunnelscope.study.schema import SCHEMA_PATH

REPO = Path(__file__).resolve().parents[3]

HELP = "check every file a study wrote against its checksum; print the commands that rebuild damaged ones"
DESCRIPTION = (
    "Check every file the study of CONFIG wrote (prepared stores chunk by chunk, checkpoints, "
    "embeddings, probe and metric tables, probe weights) against the checksum recorded when it was written, as "
    "the jobs that read them do. Lists the damaged, missing or incomplete ones and the snakemake command that "
    "rebuilds them and everything made from them (exit 1); one line and exit 0 when all is intact. Run it in the "
    "study's working directory."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default="config.yaml", help="the study's config (default: config.yaml)")
    parser.add_argument(
        "--schema", default=str(SCHEMA_PATH), help="JSON schema (default: the one shipped with tunnelscope)"
    )


def run(args) -> int:
    """Check every file the study wrote; list the damaged, missing or incomplete ones with the
    command that rebuilds them (exit 1), or one line when all is well."""
    from tunnelscope.integrity import rebuild_base
    from tunnelscope.verify import report

    study, code = read_study(args.config, args.schema)
    if study is None:
        return code
    base = rebuild_base("all", REPO / "Snakefile", [args.config])
    status, lines = report(study, args.config, base)
    print("\n".join(lines), file=sys.stderr if status else sys.stdout)
    return status
