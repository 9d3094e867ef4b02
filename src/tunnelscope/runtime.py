"""Process-wide runtime choices: the job's device (its checks, GPU lock and determinism), autocast\nprecision and the heap."""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import functools
import logging
import os
import platform
import socket
import time
from dataclasses import dataclass

import torch

from tunnelscope import gpuhost
from tunnelscope.registry import SETTING_CHOICES

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

DEVICE_SETTINGS = SETTING_CHOICES["compute.device"]
JOB_DEFAULTS = {"device": "strict", "deterministic": False}  # the schema's, for calls outside a workflow job
INSTALL_HINT = "docs/running.md, 'On GPUs'"


class DeviceError(RuntimeError):
    """A job was given a GPU it cannot use, or asked for one that is not there."""


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a torch build with kernels for ``arch_list`` (torch.cuda.get_arch_list()) runs on
    a GPU of compute ``capability``: a cubin sm_XY runs on the same major at minor Y or above
    (an sm_XYa one only on X.Y), PTX compute_XY is compiled for any capability X.Y or above."""
    device = 10 * capability[0] + capability[1]
    for arch in arch_list:
        kind, _, code = arch.partition("_")
        exact = code.endswith("a")
        code_cc = int(code.rstrip("af"))
        if kind == "compute" and device >= code_cc:
            return True
        if kind == "sm" and (device == code_cc if exact else code_cc // 10 == capability[0] and device >= code_cc):
            return True
    return False


def torch_build() -> str:
    return f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}, kernels {' '.join(torch.cuda.get_arch_list()) or 'none'})"


@functools.cache
def cuda_problem() -> str:
    """Why CUDA cannot run here ("" when every visible GPU can): unavailable, or a GPU whose
    architecture this torch build has no kernels for (its first kernel would fail)."""
    if not torch.cuda.is_available():
        names = ", ".join(gpuhost.gpu_names()) or "none found"
        return f"CUDA is unavailable to {torch_build()}; NVIDIA GPU: {names}, driver {gpuhost.driver_version()}"
    if torch.version.cuda is None:  # a ROCm build: its own checks
        return ""
    arch_list = torch.cuda.get_arch_list()
    for index in range(torch.cuda.device_count()):
        capability = torch.cuda.get_device_capability(index)
        if arch_list and not arch_supported(capability, arch_list):
            name = torch.cuda.get_device_name(index)
            return (
                f"GPU {index} ({name}, sm_{capability[0]}{capability[1]}; driver {gpuhost.driver_version()}) "
                f"is not among the architectures of {torch_build()}"
            )
    return ""


def choose_device(compute: dict, gpus_given: int | None = None) -> torch.device | None:
    """The device kind ``compute.device`` asks for here: CPU, or None for "a GPU" (cuda_problem
    is empty). Raises DeviceError when a GPU was given or required but cannot run."""
    setting = compute.get("device", JOB_DEFAULTS["device"])
    if setting not in DEVICE_SETTINGS:
        raise ValueError(f"compute.device: {setting!r} is not one of {', '.join(DEVICE_SETTINGS)}")
    if setting == "cpu":
        return torch.device("cpu")
    problem = cuda_problem()
    if not problem:
        return None
    seen = torch.cuda.is_available()  # a GPU torch sees but cannot run counts as given
    grant = gpuhost.gpu_grant(gpus_given) or (f"torch sees {torch.cuda.device_count()} GPU(s)" if seen else "")
    if not grant and setting != "cuda":
        return torch.device("cpu")  # a machine without a GPU
    if setting == "auto":
        log.warning("compute.device auto: running on the CPU, days slower than a GPU (given: %s): %s", grant, problem)
        return torch.device("cpu")
    why = f"this job was given a GPU ({grant})" if grant else "compute.device is cuda"
    raise DeviceError(
        f"{why} but cannot use it: {problem}. Install a torch build for this GPU and driver "
        f"({INSTALL_HINT}), or set compute.device: cpu (or auto to fall back to the CPU)"
    )


def claim_gpu(uuids: list[str], lock_dir: str) -> int | None:
    """Index of the first GPU whose lock file (named by its UUID, so that sessions seeing the
    GPUs in different orders or subsets agree) this process could lock, else None. The lock
    holds until the process exits."""
    for index, uuid in enumerate(uuids):
        handle = open(os.path.join(lock_dir, f"gpu-{uuid}.lock"), "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")  # who holds it, for people
        handle.flush()
        _HELD_LOCKS.append(handle)
        return index
    return None


def wait_for_gpu(uuids: list[str], lock_dir: str, poll_s: float = 2.0, report_s: float = 60.0) -> int:
    """claim_gpu, retried every ``poll_s`` while every GPU is locked by another job (a line in
    the log every ``report_s``): waiting beats sharing a GPU, whose memory two jobs may not fit."""
    started = time.monotonic()
    reported = -report_s
    while (index := claim_gpu(uuids, lock_dir)) is None:
        waited = time.monotonic() - started
        if waited - reported >= report_s:
            log.info("all %d GPUs are locked by other jobs (%s); waited %.0f s for one", len(uuids), lock_dir, waited)
            reported = waited
        time.sleep(poll_s)
    return index


def _take_gpu() -> torch.device:
    """A GPU of this job's own, made current before anything else touches CUDA (pinned memory,
    bf16 checks and model.to would otherwise open a context on GPU 0)."""
    count = torch.cuda.device_count()
    index = 0
    if count > 1:
        uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in range(count)]
        index = wait_for_gpu(uuids, gpuhost.gpu_lock_dir())
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


_JOB: dict = {}  # this process's job: its settings and device, fixed by the first job_device call


def job_device(compute: dict | None = None, gpus_given: int | None = None) -> torch.device:
    """This process's device. The first call sets the job up from ``compute`` (its ``device``
    and ``deterministic`` settings; schema defaults for those missing) and ``gpus_given`` (the
    job's Snakemake ``gpu`` resource): determinism first, then the CPU or a GPU of its own.
    Later calls (a continual evaluation embeds twice, then probes) get the same device; a
    setting that differs from the first call's is an error."""
    asked = {k: v for k, v in (compute or {}).items() if k in JOB_DEFAULTS}
    if _JOB:
        for key, value in asked.items():
            if _JOB["settings"][key] != value:
                raise RuntimeError(f"compute.{key} is {value} here but {_JOB['settings'][key]} for this process's job")
        return _JOB["device"]
    settings = {**JOB_DEFAULTS, **asked}
    apply_determinism(settings["deterministic"])
    device = choose_device(settings, gpus_given) or _take_gpu()
    _JOB.update(settings=settings, device=device)
    info = device_info(device)
    log.info("device %s: %s", device, ", ".join(f"{k} {v}" for k, v in info.items() if v and k != "device"))
    return device


@dataclass(frozen=True, kw_only=True)
class JobRuntime:
    """How a job runs, never what it computes: the settings a job's rule passes as resources (so
    that changing them reruns nothing) and the benchmarks vary. ``device``: compute.device for
    this job (None: the compute settings' own, else the schema default); ``gpus``: the GPUs its
    scheduler gave it (its ``gpu`` resource); ``threads``: torch's CPU threads; ``resident_mb``:
    the largest split kept on the device (``loader.SplitReader``); ``batch_size``: embed's
    images per forward pass; ``channels_last``: overrides compute.channels_last, for benchmarks
    (it changes results in the last bits: a workflow job leaves it None)."""

    device: str | None = None
    gpus: int | None = None
    threads: int = 1
    resident_mb: float = 1024
    batch_size: int = 256
    channels_last: bool | str | None = None

    @classmethod
    def of_job(cls, job) -> JobRuntime:
        """The runtime a Snakemake job (a script's ``snakemake`` object) was given by its rule."""
        resources = job.resources
        return cls(
            device=resources.device,
            gpus=resources.get("gpu", 0),
            threads=job.threads,
            resident_mb=resources.get("resident_mb", cls.resident_mb),
            batch_size=resources.get("embed_batch", cls.batch_size),
        )

    def start(self, compute: dict | None = None) -> torch.device:
        """Set torch's CPU threads and return this process's device (``job_device``, which sets
        the job up on its first call) for a job with ``compute`` settings."""
        torch.set_num_threads(max(1, self.threads))
        asked = dict(compute or {}) | ({"device": self.device} if self.device is not None else {})
        return job_device(asked, self.gpus)

    def compute(self, compute: dict | None) -> dict:
        """``compute`` with this runtime's channels_last override, if any."""
        compute = dict(compute or {})
        return compute if self.channels_last is None else compute | {"channels_last": self.channels_last}


def apply_determinism(on: bool) -> None:
    """compute.deterministic: cuDNN's deterministic algorithms without benchmarking, torch's
    deterministic algorithms (an operation without one stops the job, naming it), cuBLAS with
    a fixed workspace, no TF32. Off: torch's defaults (TF32 convolutions included)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    # Only when it changes: the call imports torch._dynamo and torch._inductor, 1-1.5 CPU-s of
    # every job otherwise (benchmarks/RESULTS.md, "Job start-up").
    if torch.are_deterministic_algorithms_enabled() != on:
        torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
    # TF32: convolutions by cuDNN's legacy switch (torch's default on), matrix products by the
    # public precision call (torch's default already highest); torch refuses reads after a mix
    # of these and the per-backend fp32_precision settings, so nothing here uses those.
    torch.backends.cudnn.allow_tf32 = not on
    torch.set_float32_matmul_precision("highest")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        return platform.processor() or platform.machine()


def device_info(device: torch.device | str) -> dict:
    """What ran a job, for its outputs' metadata: the device, its model, compute capability,
    CUDA and driver versions (None on the CPU) and torch's version."""
    device = torch.device(device)
    info = {
        "device": str(device),
        "device_name": cpu_model() or platform.machine(),
        "device_capability": None,
        "cuda_version": None,
        "driver_version": None,
        "torch_version": torch.__version__,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "device_name": props.name,
            "device_capability": f"{props.major}.{props.minor}",
            "cuda_version": torch.version.cuda,
            "driver_version": gpuhost.driver_version(),
        }
    return info


# CPU capabilities (torch.cpu.get_capabilities) that multiply bfloat16 in hardware; without them
# oneDNN emulates bf16 and autocast is slower than float32.
CPU_BF16_CAPABILITIES = ("avx512_bf16", "amx_bf16")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware: a CUDA GPU of compute capability 8.0
    or more (torch emulates bf16 on older ones, which its default ``is_bf16_supported()`` counts
    too), an x86 CPU with AVX512-BF16 or AMX-BF16; no other device is assumed to (ARM's bf16
    extensions included: not measured)."""
    device = torch.device(device)
    if device.type == "cuda":
        # is_bf16_supported asks the current device (and answers True on ROCm); the capability is this one's.
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return native and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return any(capabilities.get(name, False) for name in CPU_BF16_CAPABILITIES)
    return False


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """``compute.precision`` as a job on ``device`` runs it: ``auto`` is bf16 where the device
    has native bf16 (``native_bf16``), fp32 elsewhere; fp32 and bf16 stay as asked."""
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if requested not in ("fp32", "bf16"):
        raise ValueError(f"compute.precision: {requested!r} is not one of auto, fp32, bf16")
    return requested


def convolutional(model: torch.nn.Module) -> bool:
    """Whether ``model`` computes mostly on 4-D activations: two or more 2-D convolutions (a
    CNN), not a ViT (one patch-embedding convolution) or an MLP (none)."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) >= 2


def resolve_channels_last(requested: bool | str, model: torch.nn.Module) -> bool:
    """``compute.channels_last`` for ``model``: ``auto`` is NHWC for a convolutional model (on a
    CPU with oneDNN, bare training steps measured 1.4x faster for VGGm, 1.25x for ResNet-18; on GPUs the
    layout of tensor-core convolutions), NCHW otherwise (a ViT or MLP has nothing to gain)."""
    if requested == "auto":
        return convolutional(model)
    if not isinstance(requested, bool):
        raise ValueError(f"compute.channels_last: {requested!r} is not one of auto, true, false")
    return requested


def resolve_compute(compute: dict, device: torch.device | str, model: torch.nn.Module) -> dict:
    """What a job runs with: ``{"precision": fp32|bf16, "channels_last": bool}`` from its
    ``compute`` settings (schema defaults, auto, for those missing), for its outputs' metadata."""
    return {
        "precision": resolve_precision(compute.get("precision", "auto"), device),
        "channels_last": resolve_channels_last(compute.get("channels_last", "auto"), model),
    }


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``precision`` bf16 (or auto, resolved for ``device``); a no-op context for fp32."""
    enabled = resolve_precision(precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
