"""Procedural dataset generation speed on one core, against the 2,000 images/s target (issue 2)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from common import best_of, parser, report  # noqa: E402
from tunnelscope.data import synthetic  # noqa: E402
from tunnelscope.registry import SYNTHETIC_FAMILIES  # noqa: E402

TARGET = 2000.0  # images/s at 32x32 on one core


def main():
    args = parser(__doc__).parse_args()
    lines = [
        "Best of 3; 4,000 images at 16/32 px, 1,000 at 64 px (smoke: 40).",
        "",
        "| family | resolution | images/s | vs 2,000/s target |",
        "|---|---|---|---|",
    ]
    for family in SYNTHETIC_FAMILIES:
        for res in (16, 32, 64):
            classes, per_class = (4, 10) if args.smoke else (100, 40 if res <= 32 else 10)
            synthetic.generate(family, 2, 2, res, "train")  # warm-up
            seconds = best_of(lambda: synthetic.generate(family, classes, per_class, res, "train"))
            rate = classes * per_class / seconds
            lines.append(f"| {family} | {res} | {rate:,.0f} | {f'{rate / TARGET:.2f}x target' if res == 32 else ''} |")
    report("Synthetic generation (1 thread)", lines, args)


if __name__ == "__main__":
    main()
