"""Atomic writes leave shareable outputs: files and directories get the umask's mode (0644 and
0755 under umask 022), not the 0600 / 0700 of the temporaries they are written under."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

# Writes each kind of atomic output under the umask it is given, then reports the modes.
WRITER = """
import json, os, sys
from pathlib import Path
os.umask(int(sys.argv[2], 8))  # as a shell's umask before the job starts
import pandas as pd
from tunnelscope.io import atomic_dir, atomic_path, umask, write_json, write_table

out = Path(sys.argv[1])
with atomic_path(out / "plain.bin") as tmp:
    Path(tmp).write_bytes(b"x")
write_json({"a": 1}, out / "doc.json")
write_table(pd.DataFrame({"a": [1]}), str(out / "table.parquet"), str(out / "table.csv"))
with atomic_dir(out / "embeddings") as tmp:
    (tmp / "layer_0.parquet").write_bytes(b"x")
os.umask(0o077)  # changed after import: the next write follows it
with atomic_path(out / "later.bin") as tmp:
    Path(tmp).write_bytes(b"x")
modes = {p.name: oct(p.stat().st_mode & 0o7777) for p in out.rglob("*")}
print(json.dumps({"modes": modes, "umask": oct(umask())}))
"""


def _write_under(umask: int, out) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(out), oct(umask)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _proc_reports_umask() -> bool:
    with open("/proc/self/status") as fh:
        return any(line.startswith("Umask:") for line in fh)


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, "0o644", "0o755"), (0o027, "0o640", "0o750")])
def test_atomic_outputs_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    report = _write_under(umask, tmp_path)
    modes = report["modes"]
    for name in ("plain.bin", "doc.json", "table.parquet", "table.csv", "layer_0.parquet"):
        assert modes[name] == file_mode, (name, modes)
    assert modes["embeddings"] == dir_mode, modes
    assert not [name for name in modes if name.endswith(".tmp")]  # no temporary left beside them
    if _proc_reports_umask():  # Linux: read without setting it, so a later umask is followed
        assert report["umask"] == "0o77" and modes["later.bin"] == "0o600"


def test_a_group_directory_keeps_its_setgid_bit(tmp_path):
    """On a shared filesystem a project directory is often setgid, so that files keep its group."""
    from tunnelscope.io import atomic_dir

    tmp_path.chmod(0o2775)
    if not tmp_path.stat().st_mode & 0o2000:
        pytest.fail("this filesystem drops the setgid bit of a directory; the test needs one that keeps it")
    with atomic_dir(tmp_path / "embeddings") as tmp:
        assert tmp.stat().st_mode & 0o2000  # Linux: a new directory inherits it
    assert (tmp_path / "embeddings").stat().st_mode & 0o2000
