"""One study per results directory: the record (study.json) and the run lock (study.lock)."""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import TINY, snakemake_cmd, tunnelscope_cli
from tunnelscope.study import manifest
from tunnelscope.study.config import Study
from tunnelscope.study.schema import load_schema

# The cheapest real run of the tiny study: one prepare job (scikit-learn's digits, a few seconds).
TARGET = "out/prepared/digits/r32"


def write_config(workdir: Path, name: str = "tiny.yaml", **changes) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / name
    path.write_text(yaml.safe_dump({**copy.deepcopy(TINY), **changes}))
    return path


def run(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = snakemake_cmd(workdir, "--cores", "1", *args, configfile=config)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def settings(config: dict) -> dict:
    return manifest.study_settings(Study(copy.deepcopy(config), load_schema()).config)


@pytest.fixture(scope="module")
def owned(tmp_path_factory):
    """A results directory that the tiny study in workdir ``a`` has run in (one job)."""
    workdir = tmp_path_factory.mktemp("a")
    config = write_config(workdir)
    result = run(workdir, config, TARGET)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, config


# --- the settings, their differences, the check ---


def test_settings_leave_out_what_changes_no_output_and_resolve_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = settings(TINY)
    for key, value in (
        ("compute", {"device": "cpu", "resident_mb": 1}),
        ("embed", {"batch_size": 7}),
        ("embed", {"keep": False}),
    ):
        assert settings({**TINY, key: value}) == base, key
    assert settings({**TINY, "compute": {"channels_last": False}}) != base  # changes a CNN's results
    assert settings({**TINY, "results": "elsewhere"}) == base
    assert settings({**TINY, "training": {**TINY["training"], "epochs": 2}}) != base
    (tmp_path / "data").mkdir()
    data = {"source": "imagefolder", "root": "data"}
    with_root = {**TINY, "datasets": {**TINY["datasets"], "real": data}}
    assert settings(with_root)["datasets"]["real"]["root"] == str(tmp_path / "data")


def test_first_difference_names_the_dotted_key_with_both_values():
    a = {"training": {"epochs": 1, "lr": 0.1}, "grid": {"arch": ["vggm11", "vggm17"]}}
    b = {"training": {"epochs": 1, "lr": 0.1}, "grid": {"arch": ["vggm11", "vggm19"]}}
    assert manifest.first_difference(a, b) == 'grid.arch[1] ("vggm17" there, "vggm19" here)'
    assert manifest.first_difference(a, a) is None
    c = {"training": {"epochs": 1}, "grid": a["grid"]}
    assert manifest.first_difference(a, c) == "training.lr (0.1 there, unset here)"


def test_check_refuses_only_another_owner_with_other_settings(tmp_path):
    owner = manifest.Owner(("/w1/a.yaml",), "/w1")
    other = manifest.Owner(("/w2/b.yaml",), "/w2")
    recorded = {"training": {"epochs": 1}}
    manifest.record(tmp_path, owner, recorded)
    manifest.check(tmp_path, owner, {"training": {"epochs": 2}})  # the study, edited
    manifest.check(tmp_path, other, recorded)  # identical settings from elsewhere
    with pytest.raises(manifest.ManifestError) as refused:
        manifest.check(tmp_path, other, {"training": {"epochs": 2}})
    line = str(refused.value)
    assert "\n" not in line
    for part in ("/w1/a.yaml in /w1", "/w2/b.yaml in /w2", "training.epochs (1 there, 2 here)", "tunnelscope adopt"):
        assert part in line


def test_an_unreadable_record_is_named(tmp_path):
    (tmp_path / manifest.MANIFEST).write_text("{not json")
    with pytest.raises(manifest.ManifestError, match=f"{tmp_path / manifest.MANIFEST}: unreadable"):
        manifest.check(tmp_path, manifest.Owner(("/c.yaml",), "/"), {})


# --- the lock ---

HOLDER = """
import sys, time
from tunnelscope.study import manifest
manifest.ResultsLock(sys.argv[1]).acquire(manifest.Owner(("/x/holder.yaml",), "/x"))
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock(results: Path) -> subprocess.Popen:
    """A process that holds the results directory's lock until killed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(results)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_the_lock_names_its_holder_and_a_clean_release_leaves_it_free(tmp_path):
    owner = manifest.Owner(("/c.yaml",), "/w")
    first = manifest.ResultsLock(tmp_path)
    assert first.acquire(owner) is None
    with pytest.raises(manifest.ManifestError, match=rf"in use by another run \(pid {os.getpid()} "):
        manifest.ResultsLock(tmp_path).acquire(owner)
    first.release()
    assert (tmp_path / manifest.LOCK).read_text() == ""
    second = manifest.ResultsLock(tmp_path)
    assert second.acquire(owner) is None  # released cleanly: no note
    second.release()


def test_a_lock_left_by_sigkill_is_free_and_reported(tmp_path):
    holder = hold_lock(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = manifest.ResultsLock(tmp_path)
    note = lock.acquire(manifest.Owner(("/c.yaml",), "/w"))
    lock.release()
    assert note.startswith(f"a previous run (pid {holder.pid} ") and note.endswith(
        "ended without cleaning up " + str(tmp_path / manifest.LOCK) + "; continuing"
    )


# --- through Snakemake ---


@pytest.mark.integration
def test_the_first_run_records_the_study_and_unlocks_on_exit(owned):
    workdir, config = owned
    record = json.loads((workdir / "out" / manifest.MANIFEST).read_text())
    assert record["owner"] == {"configs": [str(config)], "workdir": str(workdir)}
    assert record["settings"]["training"]["epochs"] == TINY["training"]["epochs"]
    assert (workdir / "out" / manifest.LOCK).read_text() == ""


@pytest.mark.integration
def test_a_second_config_is_refused_before_any_job_naming_both(owned, tmp_path):
    workdir, config = owned
    results = workdir / "out"
    before = (results / manifest.MANIFEST).read_text()
    other = write_config(tmp_path, "other.yaml", results=str(results), training={**TINY["training"], "epochs": 2})
    for args in (("-n",), (str(results / "prepared/toy/r32"),)):  # a dry run and a real one
        result = run(tmp_path, other, *args)
        assert result.returncode != 0
        line = next(line for line in result.stderr.splitlines() if line.startswith("tunnelscope:"))
        assert f"{config} in {workdir}" in line and f"{other} in {tmp_path}" in line
        assert "differs at training.epochs (1 there, 2 here)" in line
    assert not (results / "prepared/toy").exists()  # no job started
    assert (results / manifest.MANIFEST).read_text() == before


@pytest.mark.integration
def test_the_same_settings_from_another_working_directory_are_accepted(owned, tmp_path):
    workdir, config = owned
    results = workdir / "out"
    before = json.loads((results / manifest.MANIFEST).read_text())
    copy_of = write_config(tmp_path, results=str(results), compute={"device": "cpu"})  # no output changes
    result = run(tmp_path, copy_of, str(results / TARGET.removeprefix("out/")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((results / manifest.MANIFEST).read_text())["owner"] == before["owner"]  # still a's


@pytest.mark.integration
def test_a_job_run_for_a_cluster_neither_checks_nor_locks(owned, tmp_path):
    """A job that an executor runs elsewhere reads the Snakefile too (--mode remote, as Snakemake
    starts it), while the main process holds the lock; it runs, whatever the config it was given."""
    workdir, _ = owned
    epochs = {**TINY["training"], "epochs": 2}
    other = write_config(tmp_path, "other.yaml", results=str(workdir / "out"), training=epochs)
    job = ("--mode", "remote", "--no-hooks", "--target-jobs", "prepare:dataset=toy-glyphs,transform=r32")
    holder = hold_lock(workdir / "out")
    try:
        result = run(tmp_path, other, *job)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tunnelscope:" not in result.stderr
    assert (workdir / "out/prepared/toy-glyphs/r32/store.json").exists()


@pytest.mark.integration
def test_adopt_hands_the_directory_to_another_config_but_not_during_a_run(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert run(first, write_config(first), TARGET).returncode == 0
    results = first / "out"
    other = write_config(second, "other.yaml", results=str(results), training={**TINY["training"], "epochs": 2})
    assert run(second, other, "-n").returncode != 0
    holder = hold_lock(results)
    try:
        refused = tunnelscope_cli(second, "adopt", str(other))
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 1 and "is in use by another run" in refused.stderr
    adopted = tunnelscope_cli(second, "adopt", str(other))
    assert adopted.returncode == 0, adopted.stderr
    assert f"recorded as the results of {other} in {second} (was: {first / 'tiny.yaml'} in {first})" in adopted.stdout
    assert "warning: the settings differ at training.epochs (1 there, 2 here)" in adopted.stdout
    assert run(second, other, "-n").returncode == 0
    assert run(first, first / "tiny.yaml", "-n").returncode != 0  # the first config is now the other study


@pytest.mark.integration
def test_an_edited_config_of_the_same_study_runs_and_updates_the_record(tmp_path):
    config = write_config(tmp_path)
    assert run(tmp_path, config, TARGET).returncode == 0
    write_config(tmp_path, training={**TINY["training"], "epochs": 2})  # edit one setting in place
    result = run(tmp_path, config, "out/prepared/toy/r32")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "out" / manifest.MANIFEST).read_text())
    assert record["settings"]["training"]["epochs"] == 2


@pytest.mark.integration
def test_dry_runs_unlock_and_validate_write_nothing(tmp_path):
    config = write_config(tmp_path)
    for args in (("-n",), ("--unlock",)):
        result = run(tmp_path, config, *args)
        assert result.returncode == 0, result.stderr[-3000:]
    assert tunnelscope_cli(tmp_path, "validate", str(config), "--no-budget").returncode == 0
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_a_concurrent_run_is_refused_naming_the_one_running(tmp_path):
    config = write_config(tmp_path)
    holder = hold_lock(tmp_path / "out")
    try:
        result = run(tmp_path, config, TARGET)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode != 0
    assert f"is in use by another run (pid {holder.pid} " in result.stderr
    assert f"this run, {config} in {tmp_path}, is refused" in result.stderr
    assert not (tmp_path / TARGET).exists()


@pytest.mark.integration
def test_a_run_killed_with_sigkill_leaves_a_lock_the_next_run_clears(tmp_path):
    config = write_config(tmp_path)
    lock = tmp_path / "out" / manifest.LOCK
    cmd = snakemake_cmd(tmp_path, "--cores", "1", TARGET, configfile=config)
    killed = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text()):  # the lock taken: its first job is starting
        assert killed.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert run(tmp_path, config, "--unlock").returncode == 0  # Snakemake's own lock, on the working directory
    result = run(tmp_path, config, TARGET)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"tunnelscope: a previous run (pid {killed.pid} " in result.stderr
    assert f"ended without cleaning up {lock}; continuing" in result.stderr
    assert lock.read_text() == ""
