"""Extraction: the embed job (forward, capture, pooling, Parquet write) vs a plain forward.

Target (issue 6): at most 1.3x the plain forward over the same images, batch size and precision.
"""

import tempfile

import numpy as np
import torch

from common import add_device_args, best_of, parser, report
from tunnelscope.extract import embed_images
from tunnelscope.io import write_embeddings
from tunnelscope.models import build_model, probe_points
from tunnelscope.train import autocast, to_input


def main():
    p = parser(__doc__)
    p.add_argument("--arch", default="vggm11")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    add_device_args(p)
    args = p.parse_args()
    if args.smoke:
        args.images, args.width, args.batch = 64, 0.125, 32
    device = torch.device(args.device)
    model = build_model(args.arch, 10, args.width, args.resolution).eval().to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    points = probe_points(model)
    images = np.random.default_rng(0).integers(0, 256, size=(args.images, args.resolution, args.resolution, 3), dtype=np.uint8)
    labels = np.zeros(args.images, dtype=np.int64)
    splits = np.array(["train"] * args.images)

    @torch.no_grad()
    def plain():
        for i in range(0, len(images), args.batch):
            with autocast(device, args.precision):
                model(to_input(torch.from_numpy(images[i : i + args.batch]).to(device)))

    def embed_job():
        vectors = embed_images(model, points, images, ["avg2x2"], args.batch, np.float16, device, precision=args.precision)
        with tempfile.TemporaryDirectory() as tmp:
            for point in points:
                write_embeddings(f"{tmp}/layer_{point.index:03d}.parquet", vectors[(point.index, "avg2x2")], labels, splits, np.arange(args.images), {"layer": point.index})

    plain()  # warm-up
    t_plain, t_embed = best_of(plain, device=device), best_of(embed_job, device=device)
    ratio = t_embed / t_plain
    report(
        "Extraction vs plain forward",
        [
            f"{args.arch} width {args.width}, {args.images} images at {args.resolution}px, batch {args.batch}, {args.precision}, {args.device}"
            f"{', channels-last' if args.channels_last else ''}, {len(points)} probe points, 2x2 pooling, float16 Parquet",
            "",
            "| plain forward (s) | embed job (s) | ratio | target |",
            "|---|---|---|---|",
            f"| {t_plain:.3f} | {t_embed:.3f} | {ratio:.2f}x | <= 1.3x {'met' if ratio <= 1.3 else 'NOT met'} |",
        ],
        args,
    )


if __name__ == "__main__":
    main()
