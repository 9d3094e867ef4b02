"""A plain (non-editable) ``pip install .`` gives a working CLI: the schema, the released table and
the class lists ship inside the package, so nothing is looked up in a source checkout."""

import os
import re
import shutil
import subprocess
import sysconfig
import venv

import pytest

import tunnelscope
from conftest import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtual environment with tunnelscope installed from a copy of the source tree (pip
    builds it in its usual isolated build environment, setuptools from the package index).

    Its dependencies come from this environment (a .pth line), so nothing is downloaded; the package
    itself is built and installed as a wheel into the new environment's own site-packages."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", ".snakemake", "results", "*.egg-info", "__pycache__"),
    )
    env_dir = root / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (root / "env" / site.split(str(env_dir) + "/", 1)[1] / "deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    cmd = [python, "-m", "pip", "install", "--quiet", "--no-deps", str(source)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.rmtree(source)  # the installed CLI must not need the tree it was built from
    return env_dir


def clean_env() -> dict[str, str]:
    """This environment without a PYTHONPATH (a checkout's src/, or xdist's) or an active venv."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(env_dir, *args, cwd):
    return subprocess.run(
        [env_dir / "bin" / "tunnelscope", *args], capture_output=True, text=True, cwd=cwd, env=clean_env(), timeout=300
    )


def test_the_installed_package_is_the_wheel_not_the_checkout(installed, tmp_path):
    code = "import tunnelscope.study.schema as c; print(c.__file__); print(c.SCHEMA_PATH.is_file())"
    out = subprocess.run(
        [installed / "bin" / "python", "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        check=True,
    ).stdout.split()
    assert str(installed) in out[0] and out[1] == "True"
    version = run(installed, "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"tunnelscope {tunnelscope.__version__}"


def test_validate_from_another_directory(installed, tmp_path):
    config = tmp_path / "study.yaml"
    shutil.copy(REPO / "config.yaml", config)
    result = run(installed, "validate", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "cells" in result.stdout and "vggm11_shapes_r32_none_s0" in result.stdout
    config.write_text(re.sub(r"epochs: \d+", "epochs: ten", config.read_text()))
    bad = run(installed, "validate", str(config), cwd=tmp_path)
    assert bad.returncode != 0 and "training.epochs" in bad.stderr


def test_analyze_the_shipped_release_table(installed, tmp_path):
    """The paper's comparisons ship with the package (resources/paper-analysis.yaml): no checkout needed."""
    result = run(installed, "analyze", "--paper", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "12 comparisons (the paper's" in result.stdout
    assert "in-sample R2: ood_retained 0.62, pearson 0.73, alignment 0.44" in result.stdout
