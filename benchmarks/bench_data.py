"""Data path at ImageNet scale: peak memory of prepare / pretrain / embed, and throughput.

Targets (issue 16):
- memory: the peak RSS of each of prepare, pretrain (one epoch, augmentation, 224 px) and embed
  on a generated ImageFolder tree of 4x the images within 15% of its peak on the smaller tree
  (by default 10,000 and 40,000 JPEGs of shorter side 256, ImageNet-like aspect ratios);
- throughput: images/s of the training data path as pretrain runs it on a CPU (reading the store,
  RandomResizedCrop + flip, normalisation, in the training process) at least 3x torchvision's
  ImageFolder + DataLoader on every core + RandomResizedCrop/flip decoding the JPEGs, on the
  same images (also reported: the crops made in a data-loader worker per core).
Each job runs in its own process; its peak RSS is its own plus its data-loader workers' peaks.
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import SCHEMA, parser, report

BENCH = Path(__file__).resolve()


def make_tree(root: Path, n: int, short: int, classes: int = 100, seed: int = 0) -> None:
    """n training and n/10 test JPEGs, smooth content (~10-20 KB each), shorter side ``short``,
    aspect 3:4 to 4:3 either way."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("test", max(classes, n // 10))):
        for i in range(count):
            path = root / split / f"c{i % classes:03d}" / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            aspect = rng.uniform(3 / 4, 4 / 3)
            size = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
            small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
            small.resize(size, Image.BILINEAR).save(path, quality=90)


def peak_mb() -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_mb": own + workers, "own_mb": own, "workers_mb": workers}


def training_params(resolution: int, width: float) -> dict:
    from tunnelscope.registry import IMAGENET_MEAN, IMAGENET_STD
    from tunnelscope.study.schema import load_schema, section_settings

    training = {
        **section_settings(load_schema(SCHEMA), "training", {}),
        "epochs": 1,
        "batch_size": 64,
        "warmup_epochs": 0,
        "val_fraction": 0.05,
    }
    return {
        "arch": "vggm11",
        "id_dataset": "bench",
        "resolution": resolution,
        "augmentation": "rrc_flip",
        "seed": 0,
        "model": {"width": width},
        "training": training,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "compute": {"precision": "fp32"},
    }


def run_stage(stage: str, work: Path, resolution: int, width: float) -> dict:
    """One job, in this process (called as a subprocess by ``main``)."""
    import torch  # noqa: F401  (counted in every job's peak alike)

    threads = os.cpu_count()
    start = time.perf_counter()
    if stage == "prepare":
        from tunnelscope.data.prepare import prepare

        spec = {
            "source": "imagefolder",
            "root": str(work / "tree"),
            "seed": 0,
            "test_fraction": 0.2,
            "on_bad_image": "error",
            "layout": "split_dirs",
        }
        store = prepare("bench", spec, resolution, work / "store", threads=threads)
        extra = {"store_gb": sum(s.nbytes for s in store.splits.values()) / 1e9}
    elif stage == "pretrain":
        from tunnelscope.data.store import ImageStore
        from tunnelscope.runtime import JobRuntime
        from tunnelscope.training.loop import pretrain

        info = pretrain(
            training_params(resolution, width),
            ImageStore(work / "store"),
            checkpoint=work / "ckpt.safetensors",
            train_log=work / "log.csv",
            info_path=work / "info.json",
            state_path=work / "state.pt",
            runtime=JobRuntime(threads=threads),
        )
        extra = {"test_acc": info["test_acc"]}
    else:
        from tunnelscope.features.embed import embed_eval_set
        from tunnelscope.runtime import JobRuntime

        params = {
            **training_params(resolution, width),
            "eval_set": "bench",
            "pooling": ["avg2x2"],
            "side": "default",
            "dtype": "float16",
        }
        shutil.rmtree(work / "embeddings", ignore_errors=True)
        embed_eval_set(
            params,
            backbone=str(work / "ckpt.safetensors"),
            store=str(work / "store"),
            out_dir=str(work / "embeddings"),
            runtime=JobRuntime(threads=threads, batch_size=128),
        )
        extra = {}
    return {"stage": stage, "seconds": time.perf_counter() - start, **peak_mb(), **extra}


def throughput(work: Path, resolution: int, images: int) -> tuple[float, float, float]:
    """Training images/s over the same ``images`` of the tree, best of 2: ours with the crops made
    in a data-loader worker per core (the cores torchvision's pipeline gets), ours in the training
    process (as pretrain on a CPU), and torchvision's ImageFolder + DataLoader."""
    import torch
    from torchvision import datasets as tvd
    from torchvision import transforms as T

    from tunnelscope.data.loader import SplitReader
    from tunnelscope.data.store import ImageStore
    from tunnelscope.data.transforms import Normaliser

    split = ImageStore(work / "store").splits["train"]
    order = np.random.default_rng(0).permutation(len(split))[:images]
    gen = torch.Generator().manual_seed(0)
    to_model = Normaliser()

    def ours(reader):
        start = time.perf_counter()
        for crops in reader.batches(order, 64, gen):
            to_model(crops)
        return images / (time.perf_counter() - start)

    readers = [SplitReader(split, "whole", resolution, "cpu", resident_mb=0, workers=w) for w in (os.cpu_count(), 0)]
    workers, in_process = (max(ours(reader) for _ in range(2)) for reader in readers)

    transform = T.Compose(
        [
            T.RandomResizedCrop(resolution),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    folder = tvd.ImageFolder(str(work / "tree" / "train"), transform=transform)
    subset = torch.utils.data.Subset(folder, order.tolist())
    loader = torch.utils.data.DataLoader(
        subset, batch_size=64, shuffle=False, num_workers=os.cpu_count(), persistent_workers=True
    )

    def standard():
        start = time.perf_counter()
        for _ in loader:
            pass
        return images / (time.perf_counter() - start)

    return workers, in_process, max(standard() for _ in range(2))


def main():
    p = parser(__doc__)
    p.add_argument("--images", type=int, nargs=2, default=[10000, 40000], help="training images of the two trees")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--short", type=int, default=256, help="shorter side of the generated JPEGs")
    p.add_argument("--width", type=float, default=0.0625, help="VGGm-11 width of the pretrain and embed jobs")
    p.add_argument("--throughput-images", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=3, help="throughput measurements, interleaved")
    p.add_argument(
        "--throughput-only", action="store_true", help="skip the memory jobs (the stores of --work must exist)"
    )
    p.add_argument("--work", help="keep the trees and stores here (default: a temporary directory)")
    p.add_argument("--stage", help=argparse_hidden())
    args = p.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, Path(args.work), args.resolution, args.width)))
        return
    if args.smoke:
        args.images, args.resolution, args.short, args.width, args.throughput_images, args.repeats = (
            [100, 300],
            32,
            40,
            0.125,
            60,
            1,
        )
    root = Path(args.work or tempfile.mkdtemp(prefix="bench_data."))
    small, large = args.images
    results = {}
    try:
        for n in args.images:
            work = root / f"n{n}"
            if not (work / "tree").exists():
                make_tree(work / "tree", n, args.short)
            for stage in () if args.throughput_only else ("prepare", "pretrain", "embed"):
                cmd = [
                    sys.executable,
                    str(BENCH),
                    "--stage",
                    stage,
                    "--work",
                    str(work),
                    "--resolution",
                    str(args.resolution),
                    "--width",
                    str(args.width),
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=BENCH.parent)
                results[(n, stage)] = json.loads(out.stdout.strip().splitlines()[-1])
        # Interleaved repeats: this machine's speed drifts by 20-30% over minutes.
        runs = [
            throughput(root / f"n{small}", args.resolution, min(args.throughput_images, small))
            for _ in range(args.repeats)
        ]
    finally:
        if not args.work:
            shutil.rmtree(root, ignore_errors=True)
    lines = []
    if results:
        lines += [
            f"Generated ImageFolder trees of {small:,} and {large:,} training JPEGs (+10% test), shorter side {args.short}, aspect 3:4-4:3;"
            f" one cell at {args.resolution}px with RandomResizedCrop + flip: VGGm-11 width {args.width}, 1 epoch, batch 64; embed of train + test, batch 128.",
            "",
            f"| job | peak RSS, {small:,} images (MB) | peak RSS, {large:,} images (MB) | ratio | target | seconds ({small:,} / {large:,}) |",
            "|---|---|---|---|---|---|",
        ]
        for stage in ("prepare", "pretrain", "embed"):
            a, b = results[(small, stage)], results[(large, stage)]
            ratio = b["peak_mb"] / a["peak_mb"]
            lines.append(
                f"| {stage} | {a['peak_mb']:.0f} | {b['peak_mb']:.0f} | {ratio:.2f}x | <= 1.15x {'met' if ratio <= 1.15 else 'NOT met'} | {a['seconds']:.0f} / {b['seconds']:.0f} |"
            )
        lines += [
            f"Store: {results[(small, 'prepare')]['store_gb']:.2f} GB / {results[(large, 'prepare')]['store_gb']:.2f} GB on disk.",
            "",
        ]
    cores = os.cpu_count()
    lines += [
        f"Training data path, {min(args.throughput_images, small):,} images of the {small:,}-image tree at {args.resolution}px, batch 64, images/s (ratio to torchvision's):",
        "",
        f"| run | torchvision ImageFolder + DataLoader, {cores} workers, decoding JPEGs | store, in the training process (pretrain on this CPU) | store, crops made in {cores} data-loader workers |",
        "|---|---|---|---|",
    ]
    for k, (workers, in_process, standard) in enumerate(runs, 1):
        lines.append(
            f"| {k} | {standard:.0f} | {in_process:.0f} ({in_process / standard:.2f}x) | {workers:.0f} ({workers / standard:.2f}x) |"
        )
    median = float(np.median([in_process / standard for _, in_process, standard in runs]))
    lines.append(
        f"Median ratio of pretrain's path: {median:.2f}x (target >= 3x: {'met' if median >= 3 else 'NOT met'})."
    )
    report("Data path: memory and throughput", lines, args)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
