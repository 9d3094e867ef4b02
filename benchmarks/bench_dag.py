"""DAG: wall time of a dry run of the paper grid, and how the job count scales.

Target (issue 6): `snakemake -n --configfile config/paper.yaml` in at most 10 s; jobs grow with
cells x eval sets, not with layers.
"""

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import parser, report

REPO = Path(__file__).resolve().parents[1]


def main():
    args = parser(__doc__).parse_args()
    config = REPO / ("config.yaml" if args.smoke else "config/paper.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            tmp,
            "--configfile",
            str(config),
            "-n",
            "--cores",
            "8",
        ]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        wall = time.perf_counter() - start
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    report(
        "DAG dry run",
        [
            f"`snakemake -n --configfile {config.relative_to(REPO)}` (fresh directory): {wall:.1f}s wall (target <= 10 s: {'met' if wall <= 10 else 'NOT met'}).",
            f"Jobs: {counts.get('pretrain')} pretrain, {counts.get('embed')} embed, {counts.get('probe')} probe, {counts.get('total')} in all: one embed and one probe job per (cell, eval set), whatever the number of layers.",
        ],
        args,
    )


if __name__ == "__main__":
    main()
