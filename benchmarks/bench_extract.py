"""Extraction: the embed job (store reads, forward, capture, pooling, Parquet writes) vs a plain forward.

Target (issue 6, kept by issue 16): at most 1.3x a plain forward over the same images, batch size
and precision. The embed job is ``embed_eval_set`` itself: it reads the prepared store (resident
for small uniform sets, streamed otherwise: ``--stream``), captures every probe point, pools,
and appends each batch to every layer's Parquet file on a writer thread while the next batch
runs. The plain forward runs over the same images already in memory.
"""

import os
import shutil
import tempfile

import numpy as np
import torch

from common import SCHEMA, add_device_args, best_of, chosen_device, parser, report
from inmemory import to_input, write_arrays
from tunnelscope.features.embed import embed_eval_set
from tunnelscope.models.build import build_model, probe_points
from tunnelscope.models.checkpoints import save_backbone
from tunnelscope.registry import IMAGENET_MEAN, IMAGENET_STD
from tunnelscope.runtime import JobRuntime, autocast
from tunnelscope.study.schema import load_schema, section_settings


def main():
    p = parser(__doc__)
    p.add_argument("--arch", default="vggm11")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument(
        "--stream", action="store_true", help="stream the store (resident_mb 0) instead of keeping it on the device"
    )
    add_device_args(p)
    args = p.parse_args()
    if args.smoke:
        args.images, args.width, args.batch = 64, 0.125, 32
    device = chosen_device(args)
    model = build_model(args.arch, 10, args.width, args.resolution).eval().to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    points = probe_points(model)
    images = np.random.default_rng(0).integers(
        0, 256, size=(args.images, args.resolution, args.resolution, 3), dtype=np.uint8
    )
    labels = np.arange(args.images) % 10
    work = tempfile.mkdtemp(prefix="bench_extract.")
    half = args.images // 2
    store = write_arrays(
        f"{work}/store",
        {"train": (images[:half], labels[:half]), "test": (images[half:], labels[half:])},
        10,
        args.resolution,
    )
    params = {
        "arch": args.arch,
        "id_dataset": "bench",
        "resolution": args.resolution,
        "augmentation": "none",
        "seed": 0,
        "eval_set": "bench",
        "model": {"width": args.width},
        "training": section_settings(load_schema(SCHEMA), "training", {}),
        "pooling": ["avg2x2"],
        "side": "default",
        "dtype": "float16",
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "compute": {"precision": args.precision},
    }
    save_backbone(model, f"{work}/ckpt.safetensors", {"params": params, "num_classes": 10})

    @torch.no_grad()
    def plain():
        for i in range(0, len(images), args.batch):
            with autocast(device, args.precision):
                model(to_input(torch.from_numpy(images[i : i + args.batch]).to(device)))

    def embed_job():
        shutil.rmtree(f"{work}/embeddings", ignore_errors=True)
        runtime = JobRuntime(
            threads=os.cpu_count(),
            batch_size=args.batch,
            channels_last=args.channels_last,
            resident_mb=0 if args.stream else 1024,
        )
        embed_eval_set(
            params,
            backbone=f"{work}/ckpt.safetensors",
            store=str(store.root),
            out_dir=f"{work}/embeddings",
            runtime=runtime,
        )

    try:
        plain()  # warm-up
        t_plain, t_embed = best_of(plain, device=device), best_of(embed_job, device=device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = t_embed / t_plain
    report(
        "Extraction vs plain forward",
        [
            f"{args.arch} width {args.width}, {args.images} images at {args.resolution}px ({'streamed from' if args.stream else 'resident from'} the store), batch {args.batch}, {args.precision}, {device}"
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
