"""The prepared device check: every part of the CUDA path of pretrain, embed and probe, each run
even when another fails, then one summary table (also written to OUTDIR/summary.md).

Parts: the device and torch build; training at 32 px (fp32; bf16 + channels-last; resident
RandomResizedCrop + flip, the CIFAR case; compute.deterministic's cost); a batch's crops resized in batched products against
one resize per crop; training at 224 px streamed from the store; streamed
embedding; every probe solver; two concurrent jobs taking different GPUs (where two are visible);
one tiny cell (deterministic) trained twice (checkpoint digests equal?), once killed with SIGKILL
after its first epoch and resumed (the same digest?), and run on the CPU beside the GPU (ID
accuracy, % OOD retained, tunnel start).

Usage: bash benchmarks/gpu_check.sh [--dry] [OUTDIR]     (about 10 minutes on one H100; never CI)
--dry runs the same parts on the CPU at tiny sizes: a check of this script (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
# The cores this job may use (its SLURM share or taskset), not the machine's.
THREADS = len(os.sched_getaffinity(0))


@dataclass
class Outcome:
    part: str
    status: str  # ok, FAILED, n/a
    seconds: float
    result: str


def _run(argv: list[str], log: Path, timeout: float, env: dict | None = None) -> str:
    """Run a command, its output appended to ``log``; its stdout, or an error with its last lines."""
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(argv)}\n{done.stdout}\n{done.stderr}\n")
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exit {done.returncode}: {' / '.join(tail)}")
    return done.stdout


def _table_rows(markdown: str) -> list[list[str]]:
    """The cells of a markdown table's rows, its header first."""
    return [
        line.strip("| ").split(" | ") for line in markdown.splitlines() if line.startswith("|") and "---" not in line
    ]


def _headline(markdown: str, columns: int = 4) -> str:
    """A benchmark's headline: the first columns of its table's last row, each named by its header."""
    rows = _table_rows(markdown)
    if not rows:
        return markdown.strip().splitlines()[-1]
    return ", ".join(f"{name} {value}" for name, value in list(zip(rows[0], rows[-1]))[:columns])


def _bench(script: str, args: list[str], log: Path, timeout: float, columns: int = 3) -> str:
    return _headline(_run([sys.executable, f"benchmarks/{script}", *args], log, timeout), columns)


def crops_part(args: list[str], log: Path) -> str:
    """Milliseconds per batch of 256 of each resize path, per case (32 px resident, 224 px canvases)."""
    output = _run([sys.executable, "benchmarks/bench_crops.py", *args], log, 600)
    return "; ".join(f"{row[0]} {row[1]} {row[3]} ms" for row in _table_rows(output)[1:])


def probe_part(args: list[str], log: Path) -> str:
    """The three solvers on the device's embeddings (lbfgs in fp32 and bf16, paper) beside scikit-learn."""
    output = _run([sys.executable, "benchmarks/bench_probe.py", *args], log, 600)
    paper = [line for line in output.splitlines() if line.startswith("Paper recipe")]
    return "; ".join([_headline(output, 7), *paper])


DEVICE_INFO = """
import json, platform, torch
info = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "cpu": platform.processor() or platform.machine()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info |= {"gpus": torch.cuda.device_count(), "name": p.name, "capability": f"{p.major}.{p.minor}",
             "memory_gib": round(p.total_memory / 2**30, 1), "archs": torch.cuda.get_arch_list(),
             "driver": torch.cuda.driver_version() if hasattr(torch.cuda, "driver_version") else None}
else:
    info["gpus"] = 0
print(json.dumps(info))
"""


def device_part(log: Path) -> str:
    info = json.loads(_run([sys.executable, "-c", DEVICE_INFO], log, 120))
    if not info["gpus"]:
        return f"no GPU; torch {info['torch']}, {THREADS} threads"
    return (
        f"{info['gpus']} x {info['name']} (sm {info['capability']}, {info['memory_gib']} GiB), driver "
        f"{info['driver']}, torch {info['torch']} CUDA {info['cuda_build']}, {THREADS} threads"
    )


TWO_JOBS = """
import json, sys, time, torch
from tunnelscope.runtime import job_device
device = job_device({"device": "cuda"}, gpus_given=1)
print(json.dumps({"index": device.index, "uuid": str(torch.cuda.get_device_properties(device).uuid)}), flush=True)
time.sleep(float(sys.argv[1]))  # hold the GPU while the other job chooses
"""


def two_jobs_part(log: Path, dry: bool) -> str:
    """Two jobs started together on a machine with two or more GPUs take different GPUs."""
    count = json.loads(_run([sys.executable, "-c", DEVICE_INFO], log, 120))["gpus"]
    if dry or count < 2:
        return f"n/a: {count} GPU{'s' * (count != 1)} visible"
    jobs = [
        subprocess.Popen([sys.executable, "-c", TWO_JOBS, "20"], cwd=REPO, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    chosen = [json.loads(job.stdout.readline()) for job in jobs]
    for job in jobs:
        job.wait(timeout=120)
    uuids = {c["uuid"] for c in chosen}
    if len(uuids) != 2:
        raise RuntimeError(f"both jobs took GPU {chosen[0]['index']} ({chosen[0]['uuid']})")
    return f"GPUs {chosen[0]['index']} and {chosen[1]['index']}, distinct UUIDs"


def cell_config(out: Path, name: str, dry: bool, device: str) -> Path:
    """One tiny, deterministic cell: a VGGm-11 on procedural shapes with glyphs as OOD set."""
    per_class = (60, 8) if dry else (300, 60)
    config = {
        "results": str(out / name),
        "datasets": {
            "toy": {"source": "synthetic", "family": "shapes", "classes": 4 if dry else 10,
                    "train_per_class": per_class[0], "test_per_class": per_class[1]},
            "glyphs": {"source": "synthetic", "family": "glyphs", "classes": 3 if dry else 10,
                       "train_per_class": per_class[0] // 2, "test_per_class": per_class[1]},
        },
        "grid": {"arch": ["vggm11"], "id_dataset": ["toy"], "resolution": [32], "augmentation": ["rrc_flip"]},
        "ood_sets": ["glyphs"],
        "model": {"width": 0.125 if dry else 0.5},
        "training": {"epochs": 3 if dry else 6, "batch_size": 32 if dry else 128, "warmup_epochs": 1},
        "compute": {"device": device, "deterministic": True},
    }  # fmt: skip
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


CELL = "vggm11_toy_r32_rrc_flip_s0"


def snakemake_argv(config: Path, *args: str) -> list[str]:
    """Snakemake on this repository's workflow, its records (.snakemake) beside the config's results."""
    workdir = config.with_suffix("")
    workdir.mkdir(exist_ok=True)
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(config), *args]  # fmt: skip


def snakemake(config: Path, target: str, log: Path, timeout: float) -> None:
    _run(snakemake_argv(config, "--cores", str(THREADS), target), log, timeout)


def target(out: Path, name: str, what: str) -> str:
    """A file of run ``name``: "checkpoint" (prepare + pretrain only) or "metrics" (the cell's chain)."""
    return str(
        out / name / {"checkpoint": f"cells/{CELL}/checkpoint.safetensors", "metrics": "aggregate/metrics.csv"}[what]
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def repeat_part(out: Path, log: Path, dry: bool, device: str) -> str:
    """The same cell trained twice: bitwise equal checkpoints under compute.deterministic."""
    for name, what in (("cell-a", "metrics"), ("cell-b", "checkpoint")):
        snakemake(cell_config(out, name, dry, device), target(out, name, what), log, 600)
    a, b = (digest(Path(target(out, n, "checkpoint"))) for n in ("cell-a", "cell-b"))
    if a != b:
        raise RuntimeError(f"checkpoints differ ({a[:12]} vs {b[:12]})")
    return f"two runs, checkpoint sha256 {a[:12]} both"


def resume_part(out: Path, log: Path, dry: bool, device: str) -> str:
    """The cell killed (SIGKILL of the whole process group) once its first epoch's resume state is
    written, then rerun as a SLURM retry would: the resumed checkpoint equals the uninterrupted."""
    config = cell_config(out, "cell-resume", dry, device)
    argv = snakemake_argv(config, "--cores", str(THREADS), target(out, "cell-resume", "checkpoint"))
    with open(log, "a") as fh:
        job = subprocess.Popen(argv, cwd=REPO, stdout=fh, stderr=fh, start_new_session=True)
        deadline = time.monotonic() + 600
        while not list((out / "cell-resume" / "cells").glob("*/train_state.pt")):
            if job.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("training ended or stalled before its first resume state")
            time.sleep(0.02)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    _run(snakemake_argv(config, "--unlock"), log, 120)
    _run([*argv, "--rerun-incomplete"], log, 600)
    resumed, whole = (digest(Path(target(out, n, "checkpoint"))) for n in ("cell-resume", "cell-a"))
    job_log = (out / "cell-resume" / "logs" / "pretrain" / f"{CELL}.log").read_text()
    found = re.findall(r"from saved state after epoch (\d+)", job_log)
    if not found:
        raise RuntimeError("the rerun trained from scratch: it did not resume")
    if resumed != whole:
        raise RuntimeError(f"resumed checkpoint {resumed[:12]} differs from the uninterrupted {whole[:12]}")
    return f"killed, resumed after epoch {found[-1]}: checkpoint equal to the uninterrupted run's"


def cpu_gpu_part(out: Path, log: Path, dry: bool) -> str:
    """The same cell on the CPU beside the run above: ID accuracy, % OOD retained, tunnel start.
    Under --dry the run above was on the CPU already, so it stands for both (one run less)."""
    cpu_run = "cell-a" if dry else "cell-cpu"
    if not dry:
        snakemake(cell_config(out, cpu_run, dry, "cpu"), target(out, cpu_run, "metrics"), log, 900)
    rows = []
    for name in ("cell-a", cpu_run):
        metrics = pd.read_csv(out / name / "aggregate" / "metrics.csv").iloc[0]
        info = json.loads((out / name / "cells" / CELL / "cell.json").read_text())
        rows.append(
            f"{info['device']}: ID {100 * metrics.id_last_acc:.1f}%, retained {metrics.ood_retained:.1f}%, "
            f"tunnel start {metrics.tunnel_start}"
        )
    return "; ".join(rows)


def parts(out: Path, dry: bool) -> list[tuple[str, object]]:
    """(name, thunk(log) -> result line) in the order they run."""
    gpu = "cpu" if dry else "cuda"
    small = ["--smoke"] if dry else []

    def sized(full: list[str]) -> list[str]:
        return small or full

    train32 = ["--images", "20000", "--width", "1.0"]
    train224 = ["--arch", "resnet18", "--resolution", "224", "--images", "8192", "--width", "1.0"]
    fast = ["--precision", "bf16", "--channels-last"]
    return [
        ("device", lambda log: device_part(log)),
        ("train 32 fp32", lambda log: _bench("bench_train.py", sized(train32), log, 600)),
        ("train 32 bf16+NHWC", lambda log: _bench("bench_train.py", sized(train32) + fast, log, 600)),
        ("train 32 bf16+NHWC deterministic", lambda log: _bench("bench_train.py", sized(train32) + fast + ["--deterministic"], log, 600)),
        ("train 32 rrc_flip resident", lambda log: _bench("bench_train.py", sized(train32) + fast + ["--augment"], log, 600)),
        ("crops: batched vs per crop", lambda log: crops_part(sized(["--draws", "5"]), log)),
        ("train 224 streamed", lambda log: _bench("bench_train.py", sized(train224 + ["--batch", "256", "--epochs", "2"]) + fast + ["--stream"], log, 900)),
        ("embed 224 streamed", lambda log: _bench("bench_extract.py", sized(["--images", "8192", "--width", "1.0", "--resolution", "224", "--batch", "256"]) + fast + ["--stream"], log, 600)),
        ("probe solvers", lambda log: probe_part(sized(["--rows", "50000", "--dims", "512", "2048"]), log)),
        ("two jobs, two GPUs", lambda log: two_jobs_part(log, dry)),
        ("determinism (2 runs)", lambda log: repeat_part(out, log, dry, gpu)),
        ("kill and resume", lambda log: resume_part(out, log, dry, gpu)),
        ("same cell, CPU vs device", lambda log: cpu_gpu_part(out, log, dry)),
    ]  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", nargs="?", default="gpu-check", help="where logs, configs and summary.md go")
    p.add_argument("--dry", action="store_true", help="the same parts on the CPU at tiny sizes (checks this script)")
    args = p.parse_args()
    out = Path(args.outdir).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = out / "log.txt"
    outcomes = []
    for name, thunk in parts(out, args.dry):
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            result = thunk(log)
            status = "n/a" if result.startswith("n/a") else "ok"
        except Exception as exc:  # every part runs, whatever another did
            status, result = "FAILED", f"{type(exc).__name__}: {exc}"
        outcomes.append(Outcome(name, status, time.perf_counter() - start, result))
        print(f"   {status} ({outcomes[-1].seconds:.0f}s): {result}", flush=True)
    table = ["| part | status | seconds | result |", "|---|---|---|---|"]
    table += [f"| {o.part} | {o.status} | {o.seconds:.0f} | {o.result.replace('|', '/')} |" for o in outcomes]
    title = f"### Device check{' (dry run on the CPU)' if args.dry else ''}, {time.strftime('%Y-%m-%d')}"
    summary = "\n".join([title, "", *table, "", f"Logs: {log}"])
    (out / "summary.md").write_text(summary + "\n")
    print(summary)
    return int(any(o.status == "FAILED" for o in outcomes))


if __name__ == "__main__":
    sys.exit(main())
