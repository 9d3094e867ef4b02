"""The benchmark scripts run (smoke mode: tiny sizes, no ratios asserted), so they cannot rot."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
# The device check's dry run (below) runs these in --smoke mode, with more flags than a plain
# smoke run: they are not run a second time here.
RUN_BY_DEVICE_CHECK = set(re.findall(r"bench_\w+\.py", (BENCH / "gpu_check.py").read_text()))


@pytest.mark.parametrize(
    "script", sorted(p.name for p in BENCH.glob("bench_*.py") if p.name not in RUN_BY_DEVICE_CHECK)
)
def test_benchmark_smoke(script):
    result = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke"], capture_output=True, text=True, timeout=300, cwd=BENCH.parent
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "###" in result.stdout


@pytest.mark.integration
def test_the_device_check_runs_to_its_summary_on_the_cpu(tmp_path):
    """gpu_check.sh --dry: every part on the CPU at tiny sizes, including a SIGKILLed and resumed
    training whose checkpoint must equal the uninterrupted run's, and two runs bitwise equal."""
    out = tmp_path / "check"
    result = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--dry", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHON": sys.executable},
    )
    summary = (out / "summary.md").read_text()
    assert result.returncode == 0, summary + result.stderr[-2000:]
    rows = [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| part")]
    assert len(rows) == 13 and all("| ok |" in row or "| n/a |" in row for row in rows), summary
    assert "resumed after epoch" in summary and "checkpoint sha256" in summary
