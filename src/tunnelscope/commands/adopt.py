"""``tunnelscope adopt``: record a config, run from this directory, as the owner of its results directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunnelscope.commands.study_file import read_study
from tunnelscope.study.schema import SCHEMA_PATH

HELP = "record CONFIG, run from this directory, as the study that owns its results directory"
DESCRIPTION = (
    "A results directory belongs to the study whose first run recorded it there (RESULTS/study.json): "
    "the config file and working directory of that run. A run of another config, or from another working "
    "directory, is refused unless its settings are identical. adopt records CONFIG, run from the current "
    "directory, as the owner: after moving the project or renaming the config. Refused while a run works there."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the YAML config file that owns the results directory from now on")


def run(args) -> int:
    """Record CONFIG, run from this directory, as the study that owns its results directory."""
    from tunnelscope.study import manifest

    study, code = read_study(args.config, str(SCHEMA_PATH))
    if study is None:
        return code
    results = Path(study.results)
    if not results.is_dir():
        print(f"tunnelscope: {results.resolve()}: no such directory; a study's first run records it", file=sys.stderr)
        return 1
    owner = manifest.Owner.here([args.config])
    settings = manifest.study_settings(study.config)
    lock = manifest.ResultsLock(results)
    try:
        note = lock.acquire(owner)  # not while a run works there
        try:
            previous = manifest.read(results)
        except manifest.ManifestError:
            previous = None  # an unreadable record is what adopt replaces
        manifest.record(results, owner, settings)
    except (manifest.ManifestError, OSError) as exc:
        print(f"tunnelscope: {exc}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    if note:
        print(f"tunnelscope: {note}")
    was = f" (was: {manifest.Owner.from_record(previous['owner'])})" if previous else ""
    print(f"{results.resolve()}: recorded as the results of {owner}{was}")
    moved = previous and previous["owner"]["workdir"] != owner.workdir
    difference = moved and manifest.first_difference(previous["settings"], settings)
    if difference:
        # Snakemake's params records of the old files are in the old working directory.
        print(
            f"warning: the settings differ at {difference}; the files there were made with the old ones and "
            "Snakemake here does not know it: rebuild them with snakemake --forceall (or --forcerun RULE)"
        )
    return 0
