"""``tunnelscope best-layers``: a finished study's best layer per (backbone, OOD set), with its intervals."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "print a study's best layer per (backbone, OOD set), with its intervals"
DESCRIPTION = (
    "Print RESULTS/aggregate/best_layers.parquet of a finished study, one block per (backbone, OOD "
    "set): the best layer by index and module name with its OOD accuracy and interval over the test images, the "
    "layers not distinguishable from it, the layer chosen on the probe's validation split, the last layer's "
    "accuracy, the gap and the tunnel verdict."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "results", nargs="?", default="results", help="the study's results directory (default: results)"
    )


def run(args) -> int:
    """Print a study's best layers (aggregate/best_layers.parquet), one block per (backbone, OOD
    set): what the figure and the report show, readable in a terminal."""
    from tunnelscope.figures.best_layers import summary_table
    from tunnelscope.io import read_table
    from tunnelscope.study.paths import ResultsLayout

    path = Path(ResultsLayout(args.results).path("aggregate", table="best_layers", ext="parquet"))
    if not path.is_file():
        print(
            f"tunnelscope: {path} not found; build it with: snakemake --cores N --configfile CONFIG {path}",
            file=sys.stderr,
        )
        return 1
    table = summary_table(read_table(path))
    for _, row in table.iterrows():
        print(f"{row['backbone']} -> {row['OOD set']}")
        width = max(map(len, row.index))
        for key, value in row.drop(["backbone", "OOD set"]).items():
            print(f"  {key:<{width}}  {value}")
    return 0
