"""Procedural dataset generation speed on one core, against the 2,000 images/s target.

Run: .venv/bin/python benchmarks/bench_synthetic.py [--append]
"""

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from tunnelscope import synthetic  # noqa: E402

TARGET = 2000.0  # images/s at 32x32 on one core (issue 2)


def rate(family: str, resolution: int, classes: int = 100, per_class: int = 40, repeats: int = 3) -> float:
    synthetic.generate(family, 4, 4, resolution, "train")  # warm-up
    best = 0.0
    for r in range(repeats):
        start = time.perf_counter()
        images, _ = synthetic.generate(family, classes, per_class, resolution, "train", seed=r)
        best = max(best, len(images) / (time.perf_counter() - start))
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--append", action="store_true", help="append the figures to benchmarks/RESULTS.md")
    args = parser.parse_args()
    lines = []
    for family in synthetic.FAMILIES:
        for res in (16, 32, 64):
            r = rate(family, res, per_class=40 if res <= 32 else 10)
            ratio = f"{r / TARGET:.2f}x target" if res == 32 else ""
            lines.append(f"| {family} | {res} | {r:,.0f} | {ratio} |")
    header = [
        "",
        f"### Synthetic generation ({time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, numpy {np.__version__}, 1 thread)",
        "Command: `.venv/bin/python benchmarks/bench_synthetic.py --append` (best of 3; 4,000 images at 16/32 px, 1,000 at 64 px)",
        "",
        "| family | resolution | images/s | vs 2,000/s target |",
        "|---|---|---|---|",
    ]
    text = "\n".join(header + lines) + "\n"
    print(text)
    if args.append:
        with open(os.path.join(os.path.dirname(__file__), "RESULTS.md"), "a") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
