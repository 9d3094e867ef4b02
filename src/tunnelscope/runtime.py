"""Process-wide runtime choices: the device, GPU slots, autocast precision and the heap."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import tempfile

import torch

log = logging.getLogger("tunnelscope.runtime")

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def bound_heap(threshold: int = 1 << 20) -> bool:
    """Serve every allocation above ``threshold`` bytes by its own mapping, returned to the
    system when freed.

    glibc raises its mmap threshold each time a large block is freed, so a stream of blocks of
    varying size (decoded images, canvases of whole images) soon lands on the heap and fragments
    it: measured here, a training data path grew by 470 MB of resident memory over two epochs and
    stayed flat with the threshold fixed. For processes that make such blocks (prepare, data-loader
    workers), not for those that compute on fixed-size tensors: each fresh mapping costs page
    faults. No-op (False) where the C library has no ``mallopt``.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError, TypeError):
        log.info("mallopt unavailable (%s): heap growth is not bounded", name)
        return False


_HELD_LOCKS: list = []  # open lock files keep their GPU claimed until the process exits


def claim_slot(count: int, lock_dir: str) -> int | None:
    """Index of the first of ``count`` slots whose lock file this process could lock, else None."""
    import fcntl

    for index in range(count):
        handle = open(os.path.join(lock_dir, f"tunnelscope-gpu{index}.lock"), "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _HELD_LOCKS.append(handle)
        return index
    return None


@functools.cache
def pick_device() -> torch.device:
    """CUDA when present, else CPU. On a multi-GPU workstation each job locks a free GPU, so
    concurrent jobs (at most the profile's ``gpu`` count) never share one; under SLURM the
    scheduler's CUDA_VISIBLE_DEVICES already isolates the job. Once per process: a job that
    asks again (a continual-learning evaluation embeds twice) keeps the GPU it claimed."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if count == 1 or "SLURM_JOB_ID" in os.environ:
        return torch.device("cuda:0")
    index = claim_slot(count, os.environ.get("TUNNELSCOPE_GPU_LOCK_DIR", tempfile.gettempdir()))
    if index is None:
        log.warning("all %d GPUs are claimed by other jobs; sharing cuda:0", count)
        index = 0
    return torch.device(f"cuda:{index}")


def autocast(device: torch.device, precision: str):
    """bf16 autocast when asked for (meant for GPUs); a no-op context for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
