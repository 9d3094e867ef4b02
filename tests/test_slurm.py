"""The cluster path on a real one-node SLURM (Debian's slurm-wlm), started by this module.

slurm-wlm and munge are installed with apt-get when absent; slurm.conf is generated from
`hostname -s` and `nproc`; no accounting database runs, so job status comes from squeue.
"""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
import yte

from conftest import REPO, TINY, snakemake_cmd

pytestmark = pytest.mark.integration
MARKER = "# one-node test cluster written by tunnelscope's tests/test_slurm.py"


def _run(cmd, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, **kw)


def _install():
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0:
        pytest.fail("slurm-wlm and munge are missing and this user cannot apt-get install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in ("apt-get update -qq", "apt-get install -y -qq slurm-wlm munge"):
        result = _run(cmd, env=env, timeout=900)
        assert result.returncode == 0, f"{cmd} failed: {result.stderr[-2000:]}"


def _start_munge():
    if _run("munge -n | unmunge").returncode == 0:
        return
    for d in ("/run/munge", "/var/log/munge", "/var/lib/munge", "/etc/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    if not Path("/etc/munge/munge.key").exists():
        assert _run("runuser -u munge -- mungekey --create").returncode == 0
    shutil.chown("/etc/munge/munge.key", "munge", "munge")
    result = _run("runuser -u munge -- munged")
    assert result.returncode == 0, result.stderr
    for _ in range(20):
        if _run("munge -n | unmunge").returncode == 0:
            return
        time.sleep(0.5)
    pytest.fail("munged did not start")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    _install()
    _start_munge()
    base = tmp_path_factory.mktemp("slurm")
    host, cpus = socket.gethostname().split(".")[0], os.cpu_count()
    mem_mb = int(int(open("/proc/meminfo").read().split()[1]) / 1024 * 0.8)
    (base / "state").mkdir()
    (base / "spool").mkdir()
    # Jobs' own srun calls read the default path, so the test cluster's config lives there.
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and MARKER not in conf.read_text():
        pytest.fail(f"{conf} exists and is not this test's; refusing to replace a real cluster's config")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        "\n".join(
            [
                MARKER,
                "ClusterName=tunnelscope-test",
                f"SlurmctldHost={host}",
                "SlurmUser=root",
                "AuthType=auth/munge",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "ReturnToService=2",
                "SchedulerType=sched/backfill",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                "JobCompType=jobcomp/none",
                "MinJobAge=600",  # squeue keeps finished jobs long enough for status checks
                f"StateSaveLocation={base / 'state'}",
                f"SlurmdSpoolDir={base / 'spool'}",
                f"SlurmctldPidFile={base / 'slurmctld.pid'}",
                f"SlurmdPidFile={base / 'slurmd.pid'}",
                f"SlurmctldLogFile={base / 'slurmctld.log'}",
                f"SlurmdLogFile={base / 'slurmd.log'}",
                f"NodeName={host} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    env = dict(os.environ, SLURM_CONF=str(conf))
    for daemon in ("slurmctld", "slurmd"):
        result = _run([daemon, "-c"], env=env)
        assert result.returncode == 0, f"{daemon}: {result.stderr}"
    for _ in range(60):
        if "idle" in _run(["sinfo", "-h", "-o", "%T"], env=env).stdout:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the SLURM node did not come up: {(base / 'slurmctld.log').read_text()[-2000:]}")
    yield env
    _run(["scancel", "--user", "root"], env=env)
    for pidfile in ("slurmd.pid", "slurmctld.pid"):
        pid = base / pidfile
        if pid.exists():
            _run(["kill", pid.read_text().strip()])
    # With a slurm.conf but no controller, the SLURM plugin's import-time probe stalls every
    # later snakemake start by ~10 s; leave the machine as it was.
    conf.unlink(missing_ok=True)


def _overlay(directory: Path) -> Path:
    """profiles/slurm, as Snakemake renders it (YTE), plus what this one-node test cluster needs
    (its partition, no GPUs)."""
    with open(REPO / "profiles/slurm/config.yaml") as fh:
        cfg = yte.process_yaml(fh, require_use_yte=True)
    cfg.update(
        {
            "slurm-no-account": True,
            "slurm-status-command": "squeue",
            "slurm-init-seconds-before-status-checks": 1,
            "seconds-between-status-checks": 2,
            "latency-wait": 5,
            "jobs": 4,
        }
    )
    cfg["default-resources"].update(slurm_partition="debug", mem_mb="500 * attempt", cpus_per_task=1)
    for rule, res in cfg["set-resources"].items():
        # gpu: 0 also over a rule's own gpu count, should this machine have GPUs
        res.pop("gres", None)
        res.update(slurm_partition="debug", gpu=0, mem_mb="1000 * attempt", runtime="30 * attempt")
        if rule in cfg["set-threads"]:
            res["cpus_per_task"] = 1
    # as a local --cores 2 run, whose heavy jobs take one thread each (HEAVY_THREADS)
    cfg["set-threads"] = {rule: 1 for rule in cfg["set-threads"]}
    # A group job asks for the CPUs of all its parallel members, more than this node's two.
    cfg.pop("groups", None)
    cfg.pop("group-components", None)
    profile = directory / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(yaml.safe_dump(cfg))
    return profile


def _study(tmp_path: Path, name: str) -> Path:
    workdir = tmp_path / name
    workdir.mkdir()
    # One cell and one OOD set keep the chain of SLURM jobs (and this test) short.
    config = dict(TINY, grid=dict(TINY["grid"], augmentation=["none"]), ood_sets=["toy-glyphs"])
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    return workdir


COMPARED = ("curves", "metrics", "layer_stats")
# The compared tables as targets: the chain of GPU-rule jobs without the figures and paper build.
TARGETS = [f"out/aggregate/{name}.parquet" for name in COMPARED]


def _tables(workdir: Path) -> dict:
    out = workdir / "out/aggregate"
    return {name: pd.read_parquet(out / f"{name}.parquet") for name in COMPARED}


def test_slurm_run_equals_a_local_run(slurm, tmp_path):
    local = _study(tmp_path, "local")
    result = _run(snakemake_cmd(local, "--cores", "2", *TARGETS), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    cluster = _study(tmp_path, "cluster")
    result = _run(
        snakemake_cmd(cluster, "--workflow-profile", str(_overlay(tmp_path)), *TARGETS), env=slurm, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sbatch" in result.stdout + result.stderr or "SLURM" in result.stdout + result.stderr
    ours, theirs = _tables(local), _tables(cluster)
    for name in ours:
        pd.testing.assert_frame_equal(ours[name], theirs[name], check_exact=False, rtol=1e-6, obj=name)


def test_cancelled_job_is_retried(slurm, tmp_path):
    workdir = _study(tmp_path, "cancel")
    proc = subprocess.Popen(
        snakemake_cmd(workdir, "--workflow-profile", str(_overlay(tmp_path)), "out/aggregate/curves.parquet"),
        env=slurm,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    cancelled = None
    deadline = time.time() + 300
    while cancelled is None and time.time() < deadline and proc.poll() is None:
        jobs = _run(["squeue", "-h", "-o", "%i %j %T %k"], env=slurm).stdout.splitlines()
        for line in jobs:
            job_id, _name, state, comment = (line.split(maxsplit=3) + [""])[:4]
            if state == "RUNNING" and "pretrain" in comment:
                _run(["scancel", job_id], env=slurm)
                cancelled = job_id
                break
        time.sleep(0.5)
    output, _ = proc.communicate(timeout=900)
    assert cancelled, "no running pretrain job was seen to cancel:\n" + output[-3000:]
    assert proc.returncode == 0, output[-3000:]
    assert len(pd.read_parquet(workdir / "out/aggregate/curves.parquet")) == 2 * 10
