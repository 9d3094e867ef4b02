"""Training: the pretrain loop (with its data pipeline) vs a bare forward+backward+step loop.

Target (issue 6): images/s of pretrain() at least 0.85x a bare loop on tensors already in memory
(same model, batch, precision). pretrain() includes uint8 -> float conversion and normalisation
per batch, validation each epoch, the per-epoch resume state and the checkpoint. Both sides run on
the device pretrain() picks (CUDA when present).
"""

import math
import os
import tempfile
import time

import numpy as np
import torch

from common import SCHEMA, add_device_args, parser, report, synchronize
from tunnelscope.config import IMAGENET_MEAN, IMAGENET_STD, load_schema, section_defaults
from tunnelscope.store import write_arrays
from tunnelscope.models import build_model
from tunnelscope.train import autocast, pick_device, pretrain, to_input


def main():
    p = parser(__doc__)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--width", type=float, default=0.25)
    add_device_args(p, device=False)
    args = p.parse_args()
    if args.smoke:
        args.images, args.epochs, args.width = 64, 1, 0.125
    device, threads = pick_device(), os.cpu_count()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images)
    store_dir = tempfile.mkdtemp()
    data = write_arrays(f"{store_dir}/store", {"train": (images, labels), "test": (images[:256], labels[:256])}, 10, 32)
    training = {**section_defaults(load_schema(SCHEMA), "training"), "epochs": args.epochs, "batch_size": 128, "lr": 0.01, "warmup_epochs": 1, "val_fraction": 0.1}
    normalization = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    params = {"arch": "vggm11", "id_dataset": "bench", "resolution": 32, "augmentation": "none", "seed": 0, "model": {"width": args.width}, "training": training, "normalization": normalization, "compute": {"precision": args.precision}}
    n_fit = args.images - round(0.1 * args.images)

    def bare():
        torch.manual_seed(0)
        model = build_model("vggm11", 10, args.width, 32).to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.05)
        x = to_input(torch.from_numpy(images[:n_fit]).to(device))
        y = torch.from_numpy(labels[:n_fit]).to(device)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        model.train()
        start = time.perf_counter()
        for _ in range(args.epochs):
            for i in range(0, n_fit, 128):
                with autocast(device, args.precision):
                    loss = loss_fn(model(x[i : i + 128]), y[i : i + 128])
                opt.zero_grad()
                loss.backward()
                opt.step()
        synchronize(device)
        return time.perf_counter() - start

    def ours():
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            pretrain(params, data, f"{tmp}/c.safetensors", f"{tmp}/log.csv", f"{tmp}/info.json", f"{tmp}/state.pt", threads, args.channels_last)
            return time.perf_counter() - start

    bare()  # warm-up
    t_bare, t_ours = min(bare() for _ in range(2)), min(ours() for _ in range(2))
    seen = n_fit * args.epochs
    ratio = (seen / t_ours) / (seen / t_bare)
    report(
        "Pretrain loop vs bare training loop",
        [
            f"VGGm-11 width {args.width}, {args.images} images at 32px (10% held out), batch 128, {args.precision}, {device}"
            f"{', channels-last' if args.channels_last else ''}, {args.epochs} epochs, no augmentation; {math.ceil(n_fit / 128)} steps/epoch",
            "",
            "| bare loop (img/s) | pretrain() (img/s) | ratio | target |",
            "|---|---|---|---|",
            f"| {seen / t_bare:.0f} | {seen / t_ours:.0f} | {ratio:.2f}x | >= 0.85x {'met' if ratio >= 0.85 else 'NOT met'} |",
        ],
        args,
    )


if __name__ == "__main__":
    main()
