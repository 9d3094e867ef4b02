"""Shared helpers of the benchmark scripts: timing and appending to RESULTS.md."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
SCHEMA = Path(__file__).resolve().parents[1] / "src" / "tunnelscope" / "study" / "config.schema.yaml"
# The tests' in-memory fixtures (tests/inmemory.py: a store of arrays, a layer file in one call)
# build the benchmarks' inputs too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes, nothing appended: checks that the script runs (CI)"
    )
    p.add_argument("--append", action="store_true", help="append the figures to benchmarks/RESULTS.md")
    return p


def add_device_args(p: argparse.ArgumentParser, device: bool = True) -> None:
    """--device, --precision, --channels-last: both sides of a benchmark run with the same ones."""
    import torch

    if device:
        p.add_argument(
            "--device",
            type=torch.device,
            help="default: the pipeline's choice (runtime.job_device: a GPU of its own when CUDA can run, else the CPU)",
        )
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16 autocast on both sides")
    p.add_argument("--channels-last", action="store_true", help="NHWC model weights on both sides")


def chosen_device(args: argparse.Namespace):
    """``--device``, else the device a pipeline job would get."""
    from tunnelscope.runtime import job_device

    return args.device or job_device()


def synchronize(device) -> None:
    """Wait for queued GPU work, so wall times cover it."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, repeats: int = 3, device="cpu") -> float:
    """Best wall time of ``repeats`` calls (warm: the first call is not special-cased)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> str:
    import numpy
    import torch

    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{platform.machine()}, {os.cpu_count()} cores{gpu}, Python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}"


def report(title: str, lines: list[str], args) -> None:
    command = "python " + " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))
    text = (
        "\n".join(["", f"### {title} ({time.strftime('%Y-%m-%d')})", f"Command: `{command}`; {machine()}", "", *lines])
        + "\n"
    )
    print(text)
    if args.append and not args.smoke:
        with open(RESULTS, "a") as fh:
            fh.write(text)
