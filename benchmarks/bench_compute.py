"""compute auto against float32 NCHW: images/s of the pretrain and embed jobs per architecture.

For each ``--archs`` entry, the pretrain job (``pretrain()`` on a resident store of random 32 px
images, its evaluations and checkpoints included) and the embed job (``embed_eval_set`` of every
probe point of that trained backbone) run with ``compute: {precision: fp32, channels_last: false}``
(every CPU run before issue 28) and with the ``auto`` defaults, A and B alternating ``--rounds``
times in one process so that load from other processes falls on both. Reported: images/s of each
side's fastest round, their ratio, and CPU seconds (user + sys of this process and its children)
per side summed over the rounds. ``--stream-224`` adds one streamed cell: VGGm-11 on images of
varying size at 224 px read by data-loader workers, RandomResizedCrop + flip on the device.
"""

import os
import resource
import shutil
import tempfile
import time

import numpy as np
from bench_train import varying_store

from common import SCHEMA, parser, report
from inmemory import write_arrays
from tunnelscope.features.embed import embed_eval_set
from tunnelscope.models.build import build_model
from tunnelscope.registry import IMAGENET_MEAN, IMAGENET_STD
from tunnelscope.runtime import JobRuntime, job_device, resolve_compute
from tunnelscope.study.schema import load_schema, section_settings
from tunnelscope.training.loop import pretrain

BASELINE = {"precision": "fp32", "channels_last": False, "deterministic": False}
AUTO = {"precision": "auto", "channels_last": "auto", "deterministic": False}


def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children (loader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    cpu, start = cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - start, cpu_seconds() - cpu


def cell_params(arch: str, resolution: int, augment: bool, args) -> dict:
    training = {
        **section_settings(load_schema(SCHEMA), "training", {}),
        "epochs": args.epochs,
        "batch_size": args.batch,
        "lr": 0.01,
        "warmup_epochs": 0,
        "val_fraction": 0.1,
    }
    return {
        "arch": arch,
        "id_dataset": "bench",
        "resolution": resolution,
        "augmentation": "rrc_flip" if augment else "none",
        "seed": 0,
        "model": {"width": args.width},
        "training": training,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
    }


def compare(name: str, store, params: dict, images: int, args, work: str, stream: bool) -> list[str]:
    """Table rows (pretrain, embed) of one cell: A = float32 NCHW, B = auto, alternating."""
    resident_mb = 0 if stream else 1024
    sides = {"fp32 NCHW": BASELINE, "auto": AUTO}
    results = {(job, side): [] for job in ("pretrain", "embed") for side in sides}

    def train(compute, out):
        os.makedirs(out, exist_ok=True)
        names = {
            "checkpoint": "c.safetensors",
            "train_log": "log.csv",
            "info_path": "cell.json",
            "state_path": "state.pt",
        }
        files = {key: f"{out}/{name}" for key, name in names.items()}
        pretrain(
            {**params, "compute": compute},
            store,
            **files,
            runtime=JobRuntime(threads=args.threads, resident_mb=resident_mb),
        )

    def embed(compute, out):
        shutil.rmtree(f"{out}/emb", ignore_errors=True)
        embed_params = {
            **params,
            "eval_set": "bench",
            "pooling": ["avg2x2"],
            "side": "default",
            "dtype": "float16",
            "compute": compute,
        }
        embed_eval_set(
            embed_params,
            backbone=f"{out}/c.safetensors",
            store=str(store.root),
            out_dir=f"{out}/emb",
            runtime=JobRuntime(threads=args.threads, batch_size=args.batch * 2, resident_mb=resident_mb),
        )

    for round_ in range(args.rounds):
        order = list(sides.items()) if round_ % 2 == 0 else list(sides.items())[::-1]
        for side, compute in order:
            out = f"{work}/{side.replace(' ', '_')}"
            results[("pretrain", side)].append(timed(lambda: train(compute, out)))
            results[("embed", side)].append(timed(lambda: embed(compute, out)))
    model = build_model(params["arch"], 10, args.width, params["resolution"])
    resolved = resolve_compute(AUTO, job_device(), model)
    auto = f"{resolved['precision']}{', NHWC' if resolved['channels_last'] else ''}"
    n_fit = int(images * 0.9)
    counts = {
        "pretrain": n_fit * params["training"]["epochs"],
        "embed": len(store.splits["train"].labels) + len(store.splits["test"].labels),
    }
    rows = []
    for job in ("pretrain", "embed"):
        base, ours = results[(job, "fp32 NCHW")], results[(job, "auto")]
        rate_a, rate_b = counts[job] / min(t for t, _ in base), counts[job] / min(t for t, _ in ours)
        cpu_a, cpu_b = sum(c for _, c in base), sum(c for _, c in ours)
        rows.append(
            f"| {name} | {job} | {auto} | {rate_a:,.0f} | {rate_b:,.0f} | {rate_b / rate_a:.2f}x | {cpu_a:.1f} / {cpu_b:.1f} |"
        )
    return rows


def main():
    p = parser(__doc__)
    p.add_argument("--archs", nargs="+", default=["vggm11", "vggm17", "resnet18", "vit-t"])
    p.add_argument("--images", type=int, default=2048, help="images of each 32 px cell (10%% held out in training)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="A/B alternations per cell")
    p.add_argument(
        "--stream-224", type=int, default=0, metavar="N", help="also a streamed 224 px VGGm-11 cell of N images"
    )
    args = p.parse_args()
    if args.smoke:
        args.archs, args.images, args.rounds, args.width, args.stream_224 = ["vggm11"], 64, 1, 0.125, 8
    job_device({"deterministic": False})
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images)
    lines = [
        f"width {args.width}, batch {args.batch} (embed {args.batch * 2}), {args.threads} thread(s), {args.epochs} epoch(s), "
        f"{args.rounds} A/B rounds alternating; images/s of each side's fastest round, CPU seconds summed over the rounds",
        "",
        "| cell | job | auto resolved to | fp32 NCHW (img/s) | auto (img/s) | ratio | CPU s fp32 NCHW / auto |",
        "|---|---|---|---|---|---|---|",
    ]
    work = tempfile.mkdtemp(prefix="bench_compute.")
    try:
        store = write_arrays(f"{work}/store", {"train": (images, labels), "test": (images[:256], labels[:256])}, 10, 32)
        for arch in args.archs:
            params = cell_params(arch, 32, False, args)
            lines += compare(
                f"{arch} 32 px, {args.images} images", store, params, args.images, args, f"{work}/{arch}", False
            )
        if args.stream_224:
            streamed = varying_store(f"{work}/store224", args.stream_224, 224, rng)
            params = cell_params("vggm11", 224, True, args)
            name = f"vggm11 224 px streamed, {args.stream_224} images"
            lines += compare(name, streamed, params, args.stream_224, args, f"{work}/stream", True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report("compute auto against float32 NCHW: pretrain and embed jobs", lines, args)


if __name__ == "__main__":
    main()
