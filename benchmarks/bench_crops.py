"""RandomResizedCrop + flip of a batch: one ``interpolate`` per crop against ``resize_crops``.

Two cases (issue 32): 32-px crops of resident CIFAR-like batches of 256 (32 x 32 images) and
224-px crops of canvases of photo-sized images (shorter side 256, aspect 3:4-4:3, as prepared
stores hold them). For each: the largest difference between the two float32 paths over many
random boxes, the operators (CPU) or kernels (CUDA) each launches per batch and the time per
batch; on a CPU also today's uint8 path, the one CPU runs keep.
"""

import time

import numpy as np
import torch

from common import add_device_args, chosen_device, parser, report, synchronize


def batches(case: str, n: int, count: int, seed: int = 0):
    """``count`` (canvas, boxes, flips, size) on the CPU, drawn as training draws them."""
    from tunnelscope.data.loader import crop_plan

    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    for _ in range(count):
        if case == "cifar32":
            heights, widths, size = np.full(n, 32), np.full(n, 32), 32
        else:
            aspect = rng.uniform(3 / 4, 4 / 3, n)
            heights = np.where(aspect >= 1, 256, np.round(256 / aspect)).astype(np.int64)
            widths = np.where(aspect >= 1, np.round(256 * aspect), 256).astype(np.int64)
            size = 224
        canvas = torch.from_numpy(rng.integers(0, 256, (n, heights.max(), widths.max(), 3), dtype=np.uint8))
        boxes, flips = crop_plan(heights, widths, generator)
        yield canvas, boxes, flips, size


def per_crop(canvas, boxes, flips, size, dtype=torch.float32):
    from tunnelscope.data.loader import crop_batch

    out = torch.empty((len(boxes), size, size, 3), dtype=dtype, device=canvas.device).permute(0, 3, 1, 2)
    return crop_batch(canvas, boxes, flips, size, out, batched=False)


def batched(canvas, boxes, flips, size):
    from tunnelscope.data.loader import crop_batch

    return crop_batch(canvas, boxes, flips, size, batched=True)


# Operators that only make a view or move nothing: not counted as launches on a CPU.
VIEWS = {
    "aten::" + name
    for name in "alias as_strided expand flatten lift_fresh permute select slice squeeze t transpose unbind unsqueeze view".split()
}


def launches(fn, device) -> int:
    """Kernels (CUDA) or top-level operators that compute (CPU; views excluded) one call of
    ``fn`` launches."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        fn()
        synchronize(device)
    events = prof.events()
    if cuda:
        return sum(e.device_type == torch.autograd.DeviceType.CUDA for e in events)
    return sum(e.cpu_parent is None and e.name not in VIEWS for e in events)


def per_batch(fn, device, repeats: int) -> float:
    """Median wall time of ``repeats`` warm calls (a shared machine's noise stays out of it)."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    p = parser(__doc__)
    add_device_args(p)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--draws", type=int, default=20, help="batches of random boxes compared per case")
    args = p.parse_args()
    device = chosen_device(args)
    draws, repeats, n = (2, 1, 16) if args.smoke else (args.draws, 7, args.batch)
    lines = [
        f"batch {n}, {draws} batches of random boxes per case, {device}",
        "",
        "| case | path | launches / batch | ms / batch (median) | max abs diff vs per-crop float32 (0-255) |",
        "|---|---|---|---|---|",
    ]
    for case in ("cifar32", "photo224"):
        worst = 0.0
        for canvas, boxes, flips, size in batches(case, n, draws):
            reference = per_crop(canvas, boxes, flips, size)  # on the CPU: the exact reference
            ours = batched(canvas.to(device), boxes, flips, size).cpu()
            worst = max(worst, (ours - reference).abs().max().item())
        canvas, boxes, flips, size = next(batches(case, n, 1, seed=1))
        canvas = canvas.to(device)
        paths = {"per crop, float32": lambda: per_crop(canvas, boxes, flips, size)}
        if torch.device(device).type == "cpu":
            paths["per crop, uint8 (CPU runs)"] = lambda: per_crop(canvas, boxes, flips, size, torch.uint8)
        paths["batched, float32"] = lambda: batched(canvas, boxes, flips, size)
        for name, fn in paths.items():
            diff = f"{worst:.2e}" if name.startswith("batched") else ""
            lines.append(
                f"| {case} | {name} | {launches(fn, device)} | {1e3 * per_batch(fn, device, repeats):.1f} | {diff} |"
            )
    report("Batched crops", lines, args)


if __name__ == "__main__":
    main()
