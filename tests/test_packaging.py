"""The package beside others: ranges as requirements, the tested set as a constraints lock,
``--version``, provenance's source revision and devices, and job progress without frames."""

import io
import re
import subprocess
import tomllib

import pandas as pd
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import tunnelscope
from conftest import REPO
from tunnelscope import joblog
from tunnelscope.cli import main
from tunnelscope.figures.paper import devices, source_revision

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
LOCK = REPO / "constraints.txt"


def _locked() -> dict[str, str]:
    pins = [line.split("==") for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def _requirements() -> list[Requirement]:
    return [Requirement(r) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["test"]]


def test_requirements_are_ranges_not_pins():
    pinned = [str(r) for r in _requirements() if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned, f"exact pins in pyproject (they belong in constraints.txt): {pinned}"
    assert SpecifierSet(PROJECT["requires-python"]).contains("3.13")


def test_the_lock_pins_every_requirement_within_its_range():
    locked = _locked()
    for req in _requirements():
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in locked, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(locked[name], prereleases=True), f"{name}=={locked[name]} outside {req}"


def test_make_installs_the_lock():
    makefile = (REPO / "Makefile").read_text()
    assert "pip install --quiet -c constraints.txt -e '.[test]'" in makefile
    assert re.search(r"^\$\(STAMP\): pyproject.toml constraints.txt$", makefile, re.M)
    assert re.search(r"^test: \$\(STAMP\)", makefile, re.M) and re.search(r"^run: \$\(STAMP\)", makefile, re.M)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"tunnelscope {tunnelscope.__version__}\n"


def test_source_revision_names_the_commit_or_says_there_is_none(tmp_path):
    assert source_revision(tmp_path) == "not a git checkout"
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run(git + ["add", "a.py"], check=True)
    subprocess.run(git + ["commit", "-qm", "a"], check=True)
    head = subprocess.run(git[:3] + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert source_revision(tmp_path) == {"commit": head, "modified": False}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_revision(tmp_path) == {"commit": head, "modified": True}


def test_devices_groups_the_cells_by_what_ran_them():
    cell = dict(arch="vggm11", id_dataset="toy", resolution=32, augmentation="none")
    cells = pd.DataFrame(
        [
            {**cell, "seed": 0, "device": "cpu", "device_name": "EPYC", "cuda_version": None},
            {**cell, "seed": 1, "device": "cuda:0", "device_name": "H100", "cuda_version": "13.0"},
            {**cell, "seed": 2, "device": "cuda:0", "device_name": "H100", "cuda_version": "13.0"},
        ]
    )
    assert devices(cells) == [
        {"device": "cpu", "device_name": "EPYC", "cuda_version": None, "cells": ["vggm11_toy_r32_none_s0"]},
        {
            "device": "cuda:0",
            "device_name": "H100",
            "cuda_version": "13.0",
            "cells": ["vggm11_toy_r32_none_s1", "vggm11_toy_r32_none_s2"],
        },
    ]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_off_a_terminal_writes_whole_lines(monkeypatch):
    monkeypatch.setattr(joblog, "LINE_INTERVAL_S", 0.0)
    log = io.StringIO()
    for _ in joblog.progress_bar(range(3), desc="epoch 1/2", file=log, leave=False):
        pass
    bar = joblog.progress_bar(total=4, desc="epoch 2/2", file=log, leave=False)
    bar.update(4)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert [line.split(" [")[0] for line in text.splitlines()] == [
        "epoch 1/2: 1/3",
        "epoch 1/2: 2/3",
        "epoch 1/2: 3/3",
        "epoch 2/2: 4/4",
    ]


def test_progress_off_a_terminal_is_throttled_to_its_last_line():
    log = io.StringIO()
    for _ in joblog.progress_bar(range(1000), desc="probe", file=log, leave=False):
        pass
    assert log.getvalue().splitlines() == [log.getvalue().strip()] and "probe: 1000/1000" in log.getvalue()


def test_progress_on_a_terminal_is_tqdms_bar():
    bar = joblog.progress_bar(total=2, file=_Terminal(), leave=False)
    assert type(bar) is not joblog.LineProgress
    bar.close()
