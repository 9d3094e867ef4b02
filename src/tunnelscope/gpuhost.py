"""What the host and the scheduler say about NVIDIA GPUs, read without torch or CUDA.

The Snakefile counts GPUs here when it builds the DAG (torch would take seconds to import and
CUDA would open a context); runtime.py reads the same facts to tell whether a job was given a
GPU and to name the GPU and driver in its errors.
"""

from __future__ import annotations

import glob
import os
import stat
import subprocess
import tempfile

PROC_GPUS = "/proc/driver/nvidia/gpus"
PROC_VERSION = "/proc/driver/nvidia/version"
# SLURM sets these in a job that was allocated GPUs (gres/gpu or --gpus).
SLURM_GPU_VARIABLES = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE")
LOCK_DIR_VARIABLE = "TUNNELSCOPE_GPU_LOCK_DIR"


def visible_ids(value: str) -> list[str]:
    """The device ids a CUDA_VISIBLE_DEVICES value exposes. CUDA stops at the first entry that
    is empty or negative; SLURM writes NoDevFiles for a job without GPUs."""
    ids = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-") or entry == "NoDevFiles":
            break
        ids.append(entry)
    return ids


def _nvidia_smi(*args: str) -> list[str]:
    """Lines nvidia-smi prints, or none where it is missing, fails or hangs."""
    try:
        done = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


def gpus_present() -> int:
    """NVIDIA GPUs this process may use: the driver's entries under /proc (else `nvidia-smi -L`),
    at most as many as CUDA_VISIBLE_DEVICES lists when it is set."""
    present = len(glob.glob(f"{PROC_GPUS}/*")) or len([line for line in _nvidia_smi("-L") if line.startswith("GPU")])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return present if visible is None else min(present, len(visible_ids(visible)))


def gpu_grant(gpus_given: int | None = None) -> str:
    """Why this job counts as given a GPU ("" when nothing gave it one): the Snakemake ``gpu``
    resource, a SLURM GPU allocation or a CUDA_VISIBLE_DEVICES naming a device."""
    if gpus_given:
        return f"the job's gpu resource is {gpus_given}"
    for name in SLURM_GPU_VARIABLES:
        value = os.environ.get(name, "")
        if value and value not in ("0", "N/A", "NoDevFiles"):
            return f"{name}={value}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible_ids(visible):
        return f"CUDA_VISIBLE_DEVICES={visible}"
    return ""


def driver_version() -> str:
    """The NVIDIA driver's version, from the kernel module or nvidia-smi; "unknown" without."""
    try:
        with open(PROC_VERSION) as fh:
            words = fh.readline().split()
        version = next((w for w in words if w[:1].isdigit() and "." in w), "")
        if version:
            return version
    except OSError:
        pass
    lines = _nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader")
    return lines[0] if lines else "unknown"


def gpu_names() -> list[str]:
    """Model names of the host's NVIDIA GPUs (nvidia-smi, else /proc), whatever CUDA can see."""
    names = _nvidia_smi("--query-gpu=name", "--format=csv,noheader")
    if names:
        return names
    for info in sorted(glob.glob(f"{PROC_GPUS}/*/information")):
        with open(info) as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("Model:")), "")
        names.append(model or "NVIDIA GPU")
    return names


def gpu_lock_dir() -> str:
    """This user's directory of GPU lock files, created 0700: TUNNELSCOPE_GPU_LOCK_DIR, else
    tunnelscope-gpu-locks-UID in the temporary directory. A directory of another user (or a
    link) is refused, so no one else's files decide which GPU a job takes."""
    path = os.environ.get(LOCK_DIR_VARIABLE) or os.path.join(
        tempfile.gettempdir(), f"tunnelscope-gpu-locks-{os.getuid()}"
    )
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(
            f"GPU lock directory {path} is not a directory of user {os.getuid()}; "
            f"set {LOCK_DIR_VARIABLE} to a directory of your own"
        )
    return path
