"""`tunnelscope profile install`: the shipped Snakemake profiles, where `snakemake --profile NAME` finds them."""

import fnmatch
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO
from tunnelscope.cli import PROFILES, main

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
