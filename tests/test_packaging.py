"""The package beside others: ranges as requirements, the tested set as a constraints lock,
``--version``, provenance's source revision and devices."""

import re
import subprocess
import tomllib

import pandas as pd
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import tunnelscope
from conftest import REPO
from tunnelscope.cli import main
from tunnelscope.figures.paper import devices, source_revision

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
LOCK = REPO / "constraints.txt"


def _locked() -> dict[str, str]:
    pins = [line.split("==") for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def _requirements() -> list[Requirement]:
    """The requirements and every extra's, less an extra's own name (test pulls in slurm)."""
    extras = [r for group in PROJECT["optional-dependencies"].values() for r in group]
    return [r for r in map(Requirement, PROJECT["dependencies"] + extras) if r.name != PROJECT["name"]]


def test_requirements_are_ranges_not_pins():
    pinned = [str(r) for r in _requirements() if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned, f"exact pins in pyproject (they belong in constraints.txt): {pinned}"
    assert SpecifierSet(PROJECT["requires-python"]).contains("3.13")
    # the cluster plugin narrows numpy to its newest releases: an extra, not a requirement
    assert not any(r.startswith("snakemake-executor-plugin") for r in PROJECT["dependencies"])
    assert "tunnelscope[slurm]" in PROJECT["optional-dependencies"]["test"]


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
    (tmp_path / "venv" / "site-packages").mkdir(parents=True)  # an install inside a checkout, untracked
    (tmp_path / "venv" / "site-packages" / "b.py").write_text("y = 1\n")
    assert source_revision(tmp_path / "venv" / "site-packages") == "not a git checkout"


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
    assert devices(cells.drop(columns=["device", "device_name", "cuda_version"])) == []  # published models only
