"""Training: the pretrain loop (with its data path) vs a bare forward+backward+step loop.

Target (issues 6 and 16): images/s of pretrain() at least 0.85x a bare loop on tensors already on
the device (same model, batch, precision). pretrain() reads the prepared store (resident on the
device by default; ``--stream``: images of varying size read by data-loader workers, with
RandomResizedCrop + flip on the device), converts and normalises each batch, validates each
epoch, saves the per-epoch resume state and the checkpoint. Both sides run on the device
pretrain() picks (CUDA when present).
"""

import math
import os
import shutil
import tempfile
import time

import numpy as np
import torch

from common import SCHEMA, add_device_args, parser, report, synchronize
from inmemory import to_input, write_arrays
from tunnelscope.data.store import (
    ImageStore,
    SplitPlan,
    byte_chunks,
    write_store,
)
from tunnelscope.models.build import build_model
from tunnelscope.registry import IMAGENET_MEAN, IMAGENET_STD
from tunnelscope.runtime import JobRuntime, autocast, job_device
from tunnelscope.study.schema import load_schema, section_settings
from tunnelscope.training.loop import pretrain


def varying_store(path: str, n: int, resolution: int, rng) -> ImageStore:
    """n images of shorter side int(R * 256 / 224) and aspect 3:4-4:3, as prepare stores ImageNet."""
    short = int(resolution / 0.875)
    long = (short * rng.uniform(1.0, 4 / 3, n)).astype(int)
    tall = rng.random(n) < 0.5
    shapes = np.stack([np.where(tall, long, short), np.where(tall, short, long)], 1).astype(np.int64)
    labels = rng.integers(0, 10, n)

    def fill(start, stop):
        return [np.random.default_rng(i).integers(0, 256, (*shapes[i], 3), dtype=np.uint8) for i in range(start, stop)]

    plans = {
        split: SplitPlan(labels[:m], shapes[:m], fill, byte_chunks(shapes[:m]))
        for split, m in (("train", n), ("test", min(n, 256)))
    }
    write_store(
        path,
        {"dataset": "bench", "num_classes": 10, "resolution": resolution, "shorter_side": short, "native": False},
        plans,
    )
    return ImageStore(path)


def main():
    p = parser(__doc__)
    p.add_argument("--arch", default="vggm11")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument(
        "--stream",
        action="store_true",
        help="images of varying size streamed from the store, with RandomResizedCrop + flip",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="RandomResizedCrop + flip of resident images (the CIFAR case); implied by --stream",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="compute.deterministic on both sides (deterministic kernels, no TF32): its cost against a run without",
    )
    add_device_args(p, device=False)
    args = p.parse_args()
    if args.smoke:
        args.images, args.epochs, args.width = 64, 1, 0.125
    # The cores this process may use (a job's share under SLURM or taskset), not the machine's.
    device, threads = job_device({"deterministic": args.deterministic}), len(os.sched_getaffinity(0))
    augment = args.augment or args.stream
    rng = np.random.default_rng(0)
    r = args.resolution
    images = rng.integers(0, 256, size=(args.images, r, r, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images)
    work = tempfile.mkdtemp(prefix="bench_train.")
    if args.stream:
        store = varying_store(f"{work}/store", args.images, r, rng)
    else:
        store = write_arrays(f"{work}/store", {"train": (images, labels), "test": (images[:256], labels[:256])}, 10, r)
    training = {
        **section_settings(load_schema(SCHEMA), "training", {}),
        "epochs": args.epochs,
        "batch_size": args.batch,
        "lr": 0.01,
        "warmup_epochs": 1,
        "val_fraction": 0.1,
    }
    normalization = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    params = {
        "arch": args.arch,
        "id_dataset": "bench",
        "resolution": r,
        "augmentation": "rrc_flip" if augment else "none",
        "seed": 0,
        "model": {"width": args.width},
        "training": training,
        "normalization": normalization,
        "compute": {"precision": args.precision, "deterministic": args.deterministic},
    }
    n_fit = int(args.images * 0.9)

    def bare():
        torch.manual_seed(0)
        model = build_model(args.arch, 10, args.width, r).to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.05)
        x = to_input(torch.from_numpy(images[:n_fit]).to(device))
        y = torch.from_numpy(labels[:n_fit]).to(device)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        model.train()
        start = time.perf_counter()
        for _ in range(args.epochs):
            for i in range(0, n_fit, args.batch):
                with autocast(device, args.precision):
                    loss = loss_fn(model(x[i : i + args.batch]), y[i : i + args.batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
        synchronize(device)
        return time.perf_counter() - start

    def ours():
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            pretrain(
                params,
                store,
                checkpoint=f"{tmp}/c.safetensors",
                train_log=f"{tmp}/log.csv",
                info_path=f"{tmp}/info.json",
                state_path=f"{tmp}/state.pt",
                runtime=JobRuntime(
                    threads=threads, channels_last=args.channels_last, resident_mb=0 if args.stream else 1024
                ),
            )
            return time.perf_counter() - start

    try:
        bare()  # warm-up
        t_bare, t_ours = min(bare() for _ in range(2)), min(ours() for _ in range(2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seen = n_fit * args.epochs
    ratio = (seen / t_ours) / (seen / t_bare)
    data = (
        "streamed from a store of varying-size images, RandomResizedCrop + flip"
        if args.stream
        else f"resident, {'RandomResizedCrop + flip' if augment else 'no augmentation'}"
    )
    report(
        "Pretrain loop vs bare training loop",
        [
            f"{args.arch} width {args.width}, {args.images} images at {r}px (10% held out; {data}), batch {args.batch}, {args.precision}, {device}"
            f"{', channels-last' if args.channels_last else ''}{', deterministic' if args.deterministic else ''}, {args.epochs} epochs; {math.ceil(n_fit / args.batch)} steps/epoch",
            "",
            "| bare loop on device tensors (img/s) | pretrain() (img/s) | ratio | target |",
            "|---|---|---|---|",
            f"| {seen / t_bare:.0f} | {seen / t_ours:.0f} | {ratio:.2f}x | >= 0.85x {'met' if ratio >= 0.85 else 'NOT met'} |",
        ],
        args,
    )


if __name__ == "__main__":
    main()
