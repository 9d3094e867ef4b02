"""The shipped Snakemake profiles: `tunnelscope profile install` puts them where `snakemake --profile NAME`
finds them; what they ask of Snakemake and of SLURM (a fake sbatch records the submissions)."""

import fnmatch
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
import yte
from snakemake.resources import Resource

from conftest import REPO, TINY, snakemake_cmd
from tunnelscope.cli import main
from tunnelscope.commands.profile import PROFILES
from tunnelscope.study.config import Study
from tunnelscope.study.schema import load_schema

NAMES = ["local", "slurm"]


@pytest.fixture()
def config_home(tmp_path, monkeypatch):
    """A private $XDG_CONFIG_HOME, so that nothing is installed for the real user."""
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def _shipped(name: str) -> bytes:
    return (REPO / "profiles" / name / "config.yaml").read_bytes()


def test_one_copy_of_the_profiles_shipped_as_package_data():
    # profiles/ (the documented --workflow-profile path) is the package's own directory
    assert (REPO / "profiles").resolve() == (REPO / "src/tunnelscope/profiles").resolve()
    assert sorted(p.name for p in PROFILES.iterdir()) == NAMES
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tunnelscope"]
    for name in NAMES:
        assert any(fnmatch.fnmatch(f"profiles/{name}/config.yaml", g) for g in globs), f"{name} is not package data"


@pytest.mark.parametrize("name", NAMES)
def test_install_puts_the_profile_where_snakemake_looks(name, config_home, tmp_path, capsys):
    assert main(["profile", "install", name]) == 0
    target = config_home / "snakemake" / name / "config.yaml"
    assert target.read_bytes() == _shipped(name)
    assert f"snakemake --profile {name}" in capsys.readouterr().out
    # Snakemake's own lookup of a profile name, in a fresh process with the same environment
    found = subprocess.run(
        [sys.executable, "-c", f"from snakemake.cli import get_profile_dir; print(get_profile_dir({name!r})[1])"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert found == str(target)


def test_an_existing_different_profile_is_kept_without_force(config_home, capsys):
    target = config_home / "snakemake" / "slurm" / "config.yaml"
    target.parent.mkdir(parents=True)
    target.write_text("executor: slurm\njobs: 7  # edited for this site\n")
    assert main(["profile", "install", "slurm"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(target) in err and "--force" in err
    assert target.read_text().endswith("edited for this site\n")
    assert main(["profile", "install", "slurm", "--force"]) == 0
    assert target.read_bytes() == _shipped("slurm")


def test_reinstalling_the_same_profile_is_a_no_op(config_home, capsys):
    assert main(["profile", "install", "local"]) == 0
    assert main(["profile", "install", "local"]) == 0
    assert "already installed" in capsys.readouterr().out


def test_dest_elsewhere_prints_the_path_form(config_home, tmp_path, capsys):
    assert main(["profile", "install", "slurm", "--dest", str(tmp_path / "site")]) == 0
    assert (tmp_path / "site/slurm/config.yaml").read_bytes() == _shipped("slurm")
    assert not (config_home / "snakemake").exists()
    assert f"snakemake --profile {tmp_path / 'site' / 'slurm'}" in capsys.readouterr().out


# ---- what the profiles ask of Snakemake and of SLURM ----

SLURM_PROFILE = REPO / "profiles/slurm/config.yaml"
LOCAL_PROFILE = REPO / "profiles/local/config.yaml"
CELL = "vggm11_toy_r32_none_s0"

# One stand-in for sbatch, squeue, sacct, scontrol, scancel and sinfo (named by argv[0]): sbatch
# records its arguments and stdin and prints a job id as `sbatch --parsable` does; squeue and sacct
# report every job COMPLETED, so the executor sees it end at once without its outputs, and
# Snakemake retries it at the next attempt.
FAKE_SLURM = """\
import json, os, sys
from pathlib import Path
record = Path(os.environ["FAKE_SLURM_RECORD"])
submitted = record.read_text().splitlines() if record.exists() else []
tool = Path(sys.argv[0]).name
if tool == "sbatch":
    with record.open("a") as fh:
        fh.write(json.dumps({"argv": sys.argv[1:], "stdin": sys.stdin.read()}) + "\\n")
    print(1001 + len(submitted))
elif tool in ("squeue", "sacct") and "-j" not in sys.argv:  # sacct -j: a failed job's details
    print("\\n".join(f"{1001 + k}|COMPLETED" for k in range(len(submitted))))
elif tool == "scontrol":
    print("MinJobAge = 600 sec\\nMaxArraySize = 1001")
"""


def _rendered(path: Path) -> dict:
    """A profile as Snakemake reads it (snakemake.profiles.ProfileConfigFileParser): YTE-rendered."""
    with open(path) as fh:
        return yte.process_yaml(fh, require_use_yte=True)


def _site(path: Path = SLURM_PROFILE) -> dict:
    """The SLURM profile's site settings (its YTE __variables__, which rendering removes)."""
    return yaml.safe_load(path.read_text())["__variables__"]


def _evaluate(expression, attempt: int):
    """A resource value as Snakemake evaluates a profile's expression for one attempt."""
    if not isinstance(expression, str):
        return expression
    return Resource.cli_evaluator("r", expression, wildcards=None, input=None, attempt=attempt, async_run=None)


def _workflow_rules() -> set[str]:
    rules = set()
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        rules |= set(re.findall(r"^rule (\w+):", smk.read_text(), re.M))
    return rules


def _gpu_rules(profile: dict) -> set[str]:
    return {rule for rule, res in profile["set-resources"].items() if res.get("gpu") or "gres" in res}


def test_the_profiles_name_existing_rules_and_the_same_gpu_rules():
    slurm, local = _rendered(SLURM_PROFILE), _rendered(LOCAL_PROFILE)
    named = set(slurm["set-resources"]) | set(slurm["set-threads"]) | set(slurm["groups"]) | set(local["set-threads"])
    assert named <= _workflow_rules(), f"not rules of the workflow: {named - _workflow_rules()}"
    gpu_rules = _gpu_rules(slurm)
    assert {"pretrain", "embed"} <= gpu_rules
    # each GPU rule gets its threads as CPUs, and as many on a workstation
    assert set(local["set-threads"]) == gpu_rules
    for rule in gpu_rules:
        assert slurm["set-resources"][rule]["cpus_per_task"] == slurm["set-threads"][rule] == local["set-threads"][rule]
    assert "set-resources" not in local, "the rules declare their own gpu; the local profile only limits the total"


def test_slurm_memory_and_time_grow_with_each_retry_up_to_the_site_limits():
    profile, site = _rendered(SLURM_PROFILE), _site()
    gpu_rules = _gpu_rules(profile)
    attempts = range(1, profile["retries"] + 2)
    capped = []
    for rule, res in {"default-resources": {}, **profile["set-resources"]}.items():
        res = {**profile["default-resources"], **res}
        kind = "GPU" if rule in gpu_rules else "CPU"
        for name, limit in (("mem_mb", site[f"{kind}_MAX_MEM_MB"]), ("runtime", site[f"{kind}_MAX_RUNTIME"])):
            values = [_evaluate(res[name], attempt) for attempt in attempts]
            assert values == sorted(values) and values[0] < values[-1], f"{rule}.{name} does not grow: {values}"
            assert values[-1] <= limit, (
                f"{rule}.{name} asks {values[-1]} > the site's {limit} at attempt {attempts[-1]}"
            )
            if values[-1] == limit:
                capped.append((rule, name))
    assert ("pretrain", "runtime") in capped  # 1440 * 3 minutes would exceed the default 2 days


def _gres_variant(directory: Path) -> Path:
    """The SLURM profile with its commented alternative GPU request (--gres) in place of gpu: 1."""
    text, n = re.subn(
        r"^( +)gpu: 1 .*\n +# (gres: .*?) +#.*\n +# (gpu: 0) +#.*\n",
        r"\1\2\n\1\3\n",
        SLURM_PROFILE.read_text(),
        flags=re.M,
    )
    assert n == 1, "the profile's gpu_job no longer offers the commented gres alternative"
    directory.mkdir()
    (directory / "config.yaml").write_text(text)
    return directory


def _fake_slurm(directory: Path) -> dict:
    """PATH with the fake SLURM commands first, and where sbatch records its calls."""
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "squeue", "sacct", "scontrol", "scancel", "sinfo"):
        (bin_dir / tool).write_text(f"#!{sys.executable}\n{FAKE_SLURM}")
        (bin_dir / tool).chmod(0o755)
    return dict(
        os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_SLURM_RECORD=str(directory / "sbatch.jsonl")
    )


def _option(argv: list[str], flag: str):
    """The value of ``flag`` (``-t 60`` or ``--gpus=1``) in an sbatch argument list; None when absent."""
    for k, arg in enumerate(argv):
        if arg == flag:
            return argv[k + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


@pytest.mark.integration
@pytest.mark.parametrize("syntax", ["shipped", "gres"])
def test_a_gpu_job_reaches_sbatch_with_its_gpu_and_capped_retries(syntax, tmp_path):
    profile = SLURM_PROFILE.parent if syntax == "shipped" else _gres_variant(tmp_path / "gres")
    workdir = tmp_path / "study"
    config = dict(TINY, grid=dict(TINY["grid"], augmentation=["none"]), ood_sets=["toy-glyphs"])
    study = Study(config, load_schema())
    (workdir / study.prepared_path("toy", CELL)).mkdir(parents=True)  # pretrain's input: its only job is pretrain
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    env = _fake_slurm(tmp_path)
    cmd = snakemake_cmd(
        workdir,
        "--workflow-profile",
        str(profile),
        # what a site sets in its SITE lines, and quick status checks for the test
        "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks=1",
        "--seconds-between-status-checks=1",
        "--latency-wait=1",
        f"{study.results}/cells/{CELL}/checkpoint.safetensors",
    )
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    log = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode != 0 and "MissingOutputException" in log, log  # the fake never runs a job
    calls = [json.loads(line)["argv"] for line in (tmp_path / "sbatch.jsonl").read_text().splitlines()]

    rendered, site = _rendered(profile / "config.yaml"), _site(profile / "config.yaml")
    res, attempts = rendered["set-resources"]["pretrain"], rendered["retries"] + 1
    assert len(calls) == attempts, log
    for attempt, argv in enumerate(calls, start=1):
        wrapped = _option(argv, "--wrap")
        assert "--target-jobs 'pretrain:cell=" in wrapped and f"--attempt {attempt} " in wrapped
        assert _option(argv, "-p") == res["slurm_partition"] == site["gpu_job"]["slurm_partition"]
        assert _option(argv, "--cpus-per-task") == "8"
        assert int(_option(argv, "--mem")) == _evaluate(res["mem_mb"], attempt) <= site["GPU_MAX_MEM_MB"]
        assert int(_option(argv, "-t")) == _evaluate(res["runtime"], attempt) <= site["GPU_MAX_RUNTIME"]
        if syntax == "gres":
            assert (_option(argv, "--gres"), _option(argv, "--gpus")) == ("gpu:1", None)
        else:
            assert (_option(argv, "--gpus"), _option(argv, "--gres")) == ("1", None)
    # the last retry asks for the partition's limit, not 1440 * 3 minutes
    assert int(_option(calls[-1], "-t")) == site["GPU_MAX_RUNTIME"] < 1440 * attempts


def _planned(output: str) -> dict[str, tuple[int, int]]:
    """rule -> (threads, gpu) of the jobs a dry run lists (1 thread, 0 GPUs where it prints none)."""
    planned = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        head = re.match(r"(?:local)?rule (\w+):", block.strip())
        if head:
            threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
            gpu = re.search(r"^\s+resources: .*\bgpu=(\d+)", block, re.M)
            planned[head.group(1)] = (int(threads.group(1)) if threads else 1, int(gpu.group(1)) if gpu else 0)
    return planned


def test_the_local_profile_on_a_cpu_only_machine(tmp_path):
    """As shipped, on this GPU-less machine: the rules ask for no GPU (they count the GPUs present)."""
    assert "resources" not in _rendered(LOCAL_PROFILE), (
        "the Snakefile sets the GPU limit; the profile only overrides it"
    )
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    # --cores 16: as on a 16-core machine, where the GPU rules' threads are not scaled down
    cmd = snakemake_cmd(tmp_path, "-n", "--workflow-profile", str(LOCAL_PROFILE.parent), "--cores", "16")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    planned = _planned(result.stdout + result.stderr)
    assert {"pretrain", "embed", "probe"} <= set(planned)
    assert all(gpu == 0 for _, gpu in planned.values()), f"a job asks for a GPU on a CPU-only machine: {planned}"
    assert planned["pretrain"][0] == planned["embed"][0] == _rendered(LOCAL_PROFILE)["set-threads"]["pretrain"] == 8
