"""The job's device on CPU and mocked GPUs: the choice per compute.device, the one-line failure
of a GPU that cannot run, a GPU of each job's own (locks by UUID, waiting, set_device), the
determinism switch, what a job records, and the gpu resource the rules declare."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import REPO
from tunnelscope import gpuhost, runtime

V100 = ("Tesla V100-SXM2-16GB", (7, 0))
H100 = ("NVIDIA H100 80GB HBM3", (9, 0))
CU130_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
GRANTS = {
    "gpu resource": ({}, 1),
    "SLURM_JOB_GPUS": ({"SLURM_JOB_GPUS": "2"}, 0),
    "SLURM_GPUS_ON_NODE": ({"SLURM_GPUS_ON_NODE": "1"}, None),
    "CUDA_VISIBLE_DEVICES": ({"CUDA_VISIBLE_DEVICES": "0"}, 0),
}


@pytest.fixture
def job(monkeypatch, tmp_path):
    """A fresh process as far as the runtime knows: no job set up, no GPU variables, locks in
    ``tmp_path``; torch's determinism switches restored afterwards."""
    for name in (*gpuhost.SLURM_GPU_VARIABLES, "CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(gpuhost.LOCK_DIR_VARIABLE, str(tmp_path / "locks"))
    runtime._JOB.clear()
    runtime.cuda_problem.cache_clear()
    held = len(runtime._HELD_LOCKS)
    yield tmp_path
    runtime._JOB.clear()
    runtime.cuda_problem.cache_clear()
    for handle in runtime._HELD_LOCKS[held:]:
        handle.close()
    del runtime._HELD_LOCKS[held:]
    runtime.apply_determinism(False)


def fake_cuda(monkeypatch, gpus=(H100,), available=True, archs=CU130_ARCHS, driver="535.104.05"):
    """torch.cuda as it would be with ``gpus`` ((name, capability) each); returns the list of
    calls that reach the GPUs, in order."""
    calls = []

    def index(device=None):
        return 0 if device is None else device if isinstance(device, int) else torch.device(device).index or 0

    def properties(device=None):
        i = index(device)
        calls.append(("properties", i))
        name, (major, minor) = gpus[i]
        return SimpleNamespace(name=name, major=major, minor=minor, uuid=f"uuid-{i}-{name.split()[-1]}")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available and bool(gpus))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus) if available else 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: gpus[index(d)][1])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: gpus[index(d)][0])
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(archs))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", index(d))))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(gpuhost, "driver_version", lambda: driver)
    monkeypatch.setattr(gpuhost, "gpu_names", lambda: [name for name, _ in gpus])
    return calls


# ------------------------------------------------------------------ the choice per setting


def test_cpu_setting_never_touches_cuda(job, monkeypatch):
    def touched():
        raise AssertionError("compute.device: cpu asked CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", touched)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert runtime.job_device({"device": "cpu"}, gpus_given=1) == torch.device("cpu")


def test_strict_without_a_gpu_runs_on_the_cpu(job, monkeypatch, caplog):
    fake_cuda(monkeypatch, gpus=())
    for value in ("", "-1", "NoDevFiles"):  # CUDA_VISIBLE_DEVICES that hide every GPU give none
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        monkeypatch.setenv("SLURM_GPUS_ON_NODE", "0")
        assert runtime.choose_device({"device": "strict"}, gpus_given=0) == torch.device("cpu")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("grant", GRANTS)
def test_a_job_given_a_gpu_it_cannot_use_stops_in_one_line(job, monkeypatch, grant):
    env, gpus_given = GRANTS[grant]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fake_cuda(monkeypatch, gpus=(V100,), available=False)  # an old driver: CUDA unavailable
    with pytest.raises(runtime.DeviceError) as error:
        runtime.job_device({"device": "strict"}, gpus_given)
    message = str(error.value)
    assert "\n" not in message
    assert grant in message or f"gpu resource is {gpus_given}" in message
    for part in ("Tesla V100-SXM2-16GB", "driver 535.104.05", torch.__version__, "CUDA 13.0", "sm_75"):
        assert part in message, part
    assert "compute.device: cpu" in message and "auto" in message and "On GPUs" in message
    assert not runtime._JOB  # nothing set up: a retry decides afresh


def test_a_gpu_missing_from_the_wheels_architectures_stops_even_unasked(job, monkeypatch):
    """A V100 under the CUDA 13 wheel: torch sees it, its first kernel would fail."""
    fake_cuda(monkeypatch, gpus=(V100,))
    with pytest.raises(runtime.DeviceError, match=r"GPU 0 \(Tesla V100-SXM2-16GB, sm_70; driver 535.104.05\)"):
        runtime.job_device()


def test_auto_falls_back_to_the_cpu_with_one_warning(job, monkeypatch, caplog):
    fake_cuda(monkeypatch, gpus=(V100,))
    with caplog.at_level(logging.WARNING, logger="tunnelscope.runtime"):
        assert runtime.job_device({"device": "auto"}, gpus_given=1) == torch.device("cpu")
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "running on the CPU" in warning.getMessage() and "Tesla V100" in warning.getMessage()


def test_auto_on_a_machine_without_a_gpu_is_quiet(job, monkeypatch, caplog):
    fake_cuda(monkeypatch, gpus=())
    with caplog.at_level(logging.WARNING, logger="tunnelscope.runtime"):
        assert runtime.job_device({"device": "auto"}, gpus_given=0) == torch.device("cpu")
    assert not caplog.records


def test_cuda_setting_requires_a_gpu(job, monkeypatch):
    fake_cuda(monkeypatch, gpus=())
    with pytest.raises(runtime.DeviceError, match="compute.device is cuda but cannot use it: CUDA is unavailable"):
        runtime.job_device({"device": "cuda"})


def test_an_unknown_setting_names_its_key(job):
    with pytest.raises(ValueError, match="compute.device: 'gpu' is not one of strict, auto, cpu, cuda"):
        runtime.job_device({"device": "gpu"})


@pytest.mark.parametrize(
    "capability, archs, runs",
    [
        ((8, 9), ["sm_86"], True),  # a cubin runs on later minors of its major
        ((7, 0), CU130_ARCHS, False),  # V100 under the CUDA 13 wheel
        ((7, 0), ["sm_50", "sm_60", "sm_70", "sm_75"], True),  # ... under the CUDA 12.6 one
        ((10, 0), ["sm_90"], False),  # not across majors
        ((10, 0), ["sm_90", "compute_90"], True),  # PTX is compiled for later GPUs
        ((8, 0), ["compute_90"], False),
        ((9, 0), ["sm_90a"], True),
        ((9, 1), ["sm_90a"], False),  # arch-specific code runs on exactly its GPU
    ],
)
def test_architecture_rule(capability, archs, runs):
    assert runtime.arch_supported(capability, archs) is runs


# ------------------------------------------------------------------ a GPU of each job's own


def test_one_visible_gpu_is_taken_without_a_lock(job, monkeypatch):
    calls = fake_cuda(monkeypatch, gpus=(H100,))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert runtime.job_device({}, gpus_given=1) == torch.device("cuda", 0)
    assert calls[0] == ("set_device", 0) and not (job / "locks").exists()


def test_set_device_comes_with_the_locked_index_before_the_job_gets_its_device(job, monkeypatch):
    calls = fake_cuda(monkeypatch, gpus=(H100, H100, H100))
    runtime.claim_gpu(["uuid-0-HBM3"], gpuhost.gpu_lock_dir())  # another job holds GPU 0
    device = runtime.job_device({}, gpus_given=1)
    assert device == torch.device("cuda", 1)
    # the UUIDs are read, then GPU 1 made current; only device_info's query follows
    assert calls[:4] == [("properties", 0), ("properties", 1), ("properties", 2), ("set_device", 1)]
    assert all(call[0] == "properties" for call in calls[4:])
    assert runtime.job_device() is device and calls.count(("set_device", 1)) == 1  # once per process


def test_locks_follow_the_uuid_not_the_index(job):
    """Sessions that see the GPUs in different orders (CUDA_VISIBLE_DEVICES=0,1 and 1,0) agree."""
    lock_dir = gpuhost.gpu_lock_dir()
    assert runtime.claim_gpu(["GPU-a", "GPU-b"], lock_dir) == 0  # takes GPU-a
    assert runtime.claim_gpu(["GPU-a", "GPU-b"], lock_dir) == 1
    assert runtime.claim_gpu(["GPU-b", "GPU-a"], lock_dir) is None  # the same two GPUs, both taken
    assert sorted(p.name for p in Path(lock_dir).iterdir()) == ["gpu-GPU-a.lock", "gpu-GPU-b.lock"]
    assert f"pid {os.getpid()}" in (Path(lock_dir) / "gpu-GPU-a.lock").read_text()


def test_a_job_waits_for_a_gpu_rather_than_share_one(job, caplog):
    lock_dir, uuids = gpuhost.gpu_lock_dir(), ["GPU-a", "GPU-b"]
    first, second = runtime.claim_gpu(uuids, lock_dir), runtime.claim_gpu(uuids, lock_dir)
    assert (first, second) == (0, 1)
    got = []
    with caplog.at_level(logging.INFO, logger="tunnelscope.runtime"):
        waiter = threading.Thread(target=lambda: got.append(runtime.wait_for_gpu(uuids, lock_dir, poll_s=0.05)))
        waiter.start()
        time.sleep(0.5)
        assert not got and waiter.is_alive()  # both GPUs are taken: it waits
        runtime._HELD_LOCKS.pop(-2).close()  # the first job ends
        waiter.join(timeout=10)
    assert got == [0]
    assert any("all 2 GPUs are locked by other jobs" in r.getMessage() for r in caplog.records)


JOB_SCRIPT = """
import logging, sys, time, types
from pathlib import Path
import torch
from tunnelscope import runtime
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="log %(message)s", force=True)
gpus = 2
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: gpus
props = lambda d=None: types.SimpleNamespace(name="NVIDIA A100", major=8, minor=0, uuid=f"GPU-{{d if isinstance(d, int) else torch.device(d).index}}")
torch.cuda.get_device_properties = props
torch.cuda.get_device_capability = lambda d=None: (8, 0)
torch.cuda.get_device_name = lambda d=None: "NVIDIA A100"
torch.cuda.get_arch_list = lambda: {archs!r}
torch.cuda.set_device = lambda d: print("set_device", d, flush=True)
torch.version.cuda = "13.0"
device = runtime.job_device({{"device": "strict"}}, gpus_given=1)
print("device", device, flush=True)
release = Path(sys.argv[1])
while not release.exists():
    time.sleep(0.05)
"""


def test_concurrent_jobs_get_different_gpus_and_a_third_waits(job, tmp_path):
    """Three job processes on a machine with two (mocked) GPUs and one lock directory."""
    script = tmp_path / "job.py"
    script.write_text(JOB_SCRIPT.format(archs=CU130_ARCHS))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    releases = [tmp_path / f"release{i}" for i in range(3)]

    def start(i):
        return subprocess.Popen(
            [sys.executable, str(script), str(releases[i])], env=env, stdout=subprocess.PIPE, text=True
        )

    def next_line(process, prefix):
        """The next line ``process`` prints that starts with ``prefix``, as words; a job that
        gets a device while it should wait fails the test (rather than hang it)."""
        while line := process.stdout.readline():
            if line.startswith(prefix):
                return line.split()
            assert not line.startswith("device"), f"got a GPU while all were locked: {line}"
        raise AssertionError(f"the job ended before printing {prefix!r}")

    jobs = [start(0), start(1)]
    try:
        first = [next_line(j, "set_device") + next_line(j, "device") for j in jobs]
        assert sorted(line[-1] for line in first) == ["cuda:0", "cuda:1"]  # distinct GPUs
        assert all(line[1] == line[-1][-1] for line in first)  # each made its own GPU current
        jobs.append(start(2))
        assert "all 2 GPUs are locked by other jobs" in " ".join(next_line(jobs[2], "log all"))  # it waits
        holder_of_gpu0 = next(i for i, line in enumerate(first) if line[-1] == "cuda:0")
        releases[holder_of_gpu0].touch()  # the job on GPU 0 ends ...
        assert next_line(jobs[2], "device")[-1] == "cuda:0"  # ... and the waiting one takes it
    finally:
        for release in releases:
            release.touch()
        codes = [process.wait(timeout=60) for process in jobs]
    assert codes == [0] * len(jobs)


def test_another_users_lock_directory_is_not_used(job, monkeypatch):
    lock_dir = gpuhost.gpu_lock_dir()
    assert os.stat(lock_dir).st_mode & 0o777 == 0o700
    uid = os.getuid()
    monkeypatch.setattr(gpuhost.os, "getuid", lambda: uid + 1)  # the same directory, seen by another user
    with pytest.raises(RuntimeError, match=f"GPU lock directory {lock_dir} is not a directory of user {uid + 1}"):
        gpuhost.gpu_lock_dir()


def test_a_link_in_place_of_the_lock_directory_is_refused(job, monkeypatch):
    link = job / "link"
    link.symlink_to(job)
    monkeypatch.setenv(gpuhost.LOCK_DIR_VARIABLE, str(link))
    with pytest.raises(RuntimeError, match="set TUNNELSCOPE_GPU_LOCK_DIR to a directory of your own"):
        gpuhost.gpu_lock_dir()


def test_default_lock_directory_is_per_user(monkeypatch):
    monkeypatch.delenv(gpuhost.LOCK_DIR_VARIABLE, raising=False)
    assert gpuhost.gpu_lock_dir().endswith(f"tunnelscope-gpu-locks-{os.getuid()}")


# ------------------------------------------------------------------ host facts without torch


def test_gpus_present_counts_the_drivers_entries_within_visible_devices(monkeypatch, tmp_path):
    for bus in ("0000:01:00.0", "0000:41:00.0", "0000:81:00.0", "0000:c1:00.0"):
        (tmp_path / bus).mkdir()
    monkeypatch.setattr(gpuhost, "PROC_GPUS", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpuhost.gpus_present() == 4
    for value, count in (("1,3", 2), ("2,-1,3", 1), ("", 0), ("NoDevFiles", 0), ("0,1,2,3,4,5", 4)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert gpuhost.gpus_present() == count, value


def test_gpus_present_is_zero_without_a_driver(monkeypatch, tmp_path):
    monkeypatch.setattr(gpuhost, "PROC_GPUS", str(tmp_path / "absent"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert gpuhost.gpus_present() == 0


def test_driver_version_from_the_kernel_module(monkeypatch, tmp_path):
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n")
    monkeypatch.setattr(gpuhost, "PROC_VERSION", str(version))
    assert gpuhost.driver_version() == "535.104.05"
    monkeypatch.setattr(gpuhost, "PROC_VERSION", str(tmp_path / "absent"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpuhost.driver_version() == "unknown"


# ------------------------------------------------------------------ determinism and records


def test_determinism_is_set_before_cuda_is_asked(job, monkeypatch):
    seen = {}
    fake_cuda(monkeypatch, gpus=())
    monkeypatch.setattr(
        torch.cuda,
        "is_available",
        lambda: seen.setdefault("cublas", os.environ.get("CUBLAS_WORKSPACE_CONFIG")) and False,
    )
    runtime.job_device({"deterministic": True})
    assert seen == {"cublas": ":4096:8"}
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark and not torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32
    runtime.apply_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.allow_tf32  # torch's defaults


def test_a_process_keeps_its_jobs_settings(job):
    device = runtime.job_device({"device": "cpu", "deterministic": False})
    assert runtime.job_device({"precision": "bf16"}) is device  # settings the device does not read
    with pytest.raises(RuntimeError, match="compute.deterministic is True here but False for this process's job"):
        runtime.job_device({"deterministic": True})


def test_device_info_on_the_cpu_and_on_a_gpu(job, monkeypatch):
    cpu = runtime.device_info("cpu")
    assert cpu["device"] == "cpu" and cpu["device_name"] and cpu["torch_version"] == torch.__version__
    assert cpu["device_capability"] is None and cpu["cuda_version"] is None
    fake_cuda(monkeypatch, gpus=(H100, H100))
    gpu = runtime.device_info(torch.device("cuda", 1))
    assert gpu == {
        "device": "cuda:1",
        "device_name": "NVIDIA H100 80GB HBM3",
        "device_capability": "9.0",
        "cuda_version": "13.0",
        "driver_version": "535.104.05",
        "torch_version": torch.__version__,
    }


# ------------------------------------------------------------------ the gpu resource of the rules

GPU_RULES = ("pretrain", "embed", "probe", "continual_train", "continual_finetune", "continual_evaluate")
PARSE = """
import json, sys
from pathlib import Path
import tunnelscope.gpuhost as gpuhost
gpuhost.gpus_present = lambda: {gpus}
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(cores=4, resources={given}),
        config_settings=ConfigSettings(configfiles=[Path({config!r})]),
        snakefile=Path({snakefile!r}),
        workdir=Path({workdir!r}),
    )._workflow
    limit = workflow.global_resources.get("gpu")
    rules = {{name: workflow.get_rule(name).resources["gpu"].value for name in {rules!r}}}
    print(json.dumps({{"limit": limit and limit.value, "rules": rules}}))
"""


def parsed_resources(tmp_path, gpus: int, given: dict, compute: dict) -> dict:
    """The global gpu limit and each GPU rule's gpu, as the Snakefile sets them on a machine with
    ``gpus`` GPUs (counted by a patched gpuhost.gpus_present)."""
    config = tmp_path / "study.yaml"
    study = yaml.safe_load((REPO / "config/continual.yaml").read_text())  # every GPU rule has jobs
    config.write_text(yaml.safe_dump({**study, "compute": compute}))
    code = PARSE.format(
        gpus=gpus,
        given=given,
        config=str(config),
        snakefile=str(REPO / "Snakefile"),
        workdir=str(tmp_path),
        rules=GPU_RULES,
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_gpu_rules_take_one_of_the_gpus_present(tmp_path):
    cases = {  # GPUs present, --resources, compute section
        "three GPUs": (3, {}, {}),
        "--resources gpu=1": (3, {"gpu": 1}, {}),  # the user's limit is kept
        "CPU-only": (0, {}, {}),
        "compute.device cpu": (2, {}, {"device": "cpu"}),
    }
    for name in cases:
        (tmp_path / name).mkdir()
    with ThreadPoolExecutor(len(cases)) as pool:  # four Snakefile parses side by side
        got = dict(zip(cases, pool.map(lambda name: parsed_resources(tmp_path / name, *cases[name]), cases)))
    one, none = dict.fromkeys(GPU_RULES, 1), dict.fromkeys(GPU_RULES, 0)
    assert got == {
        "three GPUs": {"limit": 3, "rules": one},
        "--resources gpu=1": {"limit": 1, "rules": one},
        "CPU-only": {"limit": 0, "rules": none},
        "compute.device cpu": {"limit": 2, "rules": none},
    }


# --- compute auto: precision by the device's native bf16, channels_last by the model ---


def cpu_with(monkeypatch, **capabilities):
    """torch.cpu.get_capabilities as on a CPU with exactly these features."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)


def gpu_of(monkeypatch, capability):
    """torch.cuda as on a GPU of ``capability``: bf16 counts as supported below 8.0 only with
    emulation, as torch answers."""
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or capability >= (8, 0)
    )
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


def test_auto_precision_is_bf16_on_this_cpu_exactly_where_it_reports_native_bf16():
    capabilities = torch.cpu.get_capabilities()
    native = bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    assert runtime.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")


@pytest.mark.parametrize(
    ("capabilities", "expected"),
    [
        ({"avx512_bf16": True, "amx_bf16": False}, "bf16"),  # this machine's AMD EPYC
        ({"avx512_bf16": False, "amx_bf16": True}, "bf16"),  # a Sapphire Rapids Xeon
        ({"avx512_f": True, "avx2": True, "avx512_bf16": False}, "fp32"),  # AVX-512 without BF16
        ({"architecture": "arm64", "bf16": True}, "fp32"),  # not measured: left at fp32
    ],
)
def test_auto_precision_follows_the_cpus_native_bf16(monkeypatch, capabilities, expected):
    cpu_with(monkeypatch, **capabilities)
    assert runtime.resolve_precision("auto", "cpu") == expected
    assert runtime.resolve_precision("fp32", "cpu") == "fp32" and runtime.resolve_precision("bf16", "cpu") == "bf16"


@pytest.mark.parametrize(
    ("capability", "expected"), [((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")]
)
def test_auto_precision_on_a_gpu_is_the_probes_rule(monkeypatch, capability, expected):
    gpu_of(monkeypatch, capability)
    cpu_with(monkeypatch, avx512_bf16=True)  # the host's CPU does not count for a GPU job
    assert runtime.resolve_precision("auto", "cuda:0") == expected
    assert runtime.resolve_precision("bf16", "cuda:0") == "bf16"


@pytest.mark.parametrize(
    ("arch", "expected"),
    [("vggm11", True), ("vggm11-dagger", True), ("resnet18", True), ("vit-t", False), ("mlp3-w32", False)],
)
def test_auto_channels_last_is_on_for_convolutional_models(arch, expected):
    from tunnelscope.models.build import build_model

    model = build_model(arch, 4, 1.0 if arch.startswith("mlp") else 0.125, 32)  # an MLP's width is in its name
    assert runtime.resolve_channels_last("auto", model) is expected
    assert runtime.resolve_channels_last(False, model) is False and runtime.resolve_channels_last(True, model) is True


def test_compute_settings_outside_their_choices_are_named():
    with pytest.raises(ValueError, match=r"^compute.precision: 'fp16' is not one of auto, fp32, bf16$"):
        runtime.resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match=r"^compute.channels_last: 'yes' is not one of auto, true, false$"):
        runtime.resolve_channels_last("yes", torch.nn.Linear(2, 2))


SCHEDULE = """
workflow.register_resource("gpu", {limit})

rule all:
    input:
        expand("job{{i}}.txt", i=range(2)),

rule job:
    output:
        "job{{i}}.txt",
    resources:
        gpu=1,
    shell:
        "python -c 'import time; print(time.time())' > {{output}}; sleep 1.5; python -c 'import time; print(time.time())' >> {{output}}"
"""


@pytest.mark.parametrize("limit", [1, 2])
def test_snakemake_honours_a_gpu_limit_a_snakefile_registers(tmp_path, limit):
    """What the Snakefile relies on: a limit registered while parsing caps concurrent jobs."""
    (tmp_path / "Snakefile").write_text(SCHEDULE.format(limit=limit))
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--directory", str(tmp_path)]
    done = subprocess.run([*cmd, "--snakefile", str(tmp_path / "Snakefile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (a0, a1), (b0, b1) = (map(float, (tmp_path / f"job{i}.txt").read_text().split()) for i in range(2))
    overlap = min(a1, b1) > max(a0, b0)
    assert overlap is (limit == 2)


def test_a_job_without_determinism_does_not_load_torch_s_compiler():
    """torch.use_deterministic_algorithms imports torch._dynamo and torch._inductor (about 1 CPU-s
    of every embed and probe job, benchmarks/RESULTS.md): a job that keeps torch's default does
    not call it; one that switches determinism on still gets it."""
    code = (
        "import sys, torch\n"
        "from tunnelscope.runtime import apply_determinism\n"
        "apply_determinism(False)\n"
        "off = 'torch._dynamo' in sys.modules\n"
        "apply_determinism(True)\n"
        "print(off, torch.are_deterministic_algorithms_enabled())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["False", "True"]


class _Resources(dict):
    """Snakemake's resources: attributes and ``get``."""

    __getattr__ = dict.__getitem__


def test_a_jobs_runtime_is_read_from_its_rule_and_overrides_only_channels_last():
    embed = SimpleNamespace(threads=3, resources=_Resources(device="auto", gpu=1, resident_mb=64, embed_batch=32))
    assert runtime.JobRuntime.of_job(embed) == runtime.JobRuntime(
        device="auto", gpus=1, threads=3, resident_mb=64, batch_size=32
    )
    probe = runtime.JobRuntime.of_job(SimpleNamespace(threads=1, resources=_Resources(device="cpu")))
    assert (probe.gpus, probe.resident_mb, probe.batch_size) == (0, 1024, 256)  # the defaults where a rule sets none
    compute = {"precision": "fp32", "channels_last": "auto"}
    assert runtime.JobRuntime().compute(compute) == compute
    assert runtime.JobRuntime(channels_last=False).compute(compute) == {"precision": "fp32", "channels_last": False}


def test_a_runtime_starts_the_job_on_its_device_setting(job):
    threads = torch.get_num_threads()
    try:
        assert runtime.JobRuntime(device="cpu", threads=3).start({"deterministic": False}) == torch.device("cpu")
        assert torch.get_num_threads() == 3 and runtime._JOB["settings"]["device"] == "cpu"
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(RuntimeError, match="compute.device is strict here but cpu"):
        runtime.JobRuntime(device="strict").start()
