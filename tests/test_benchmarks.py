"""The benchmark scripts run (smoke mode: tiny sizes, no ratios asserted), so they cannot rot."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("bench_*.py")))
def test_benchmark_smoke(script):
    result = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke"], capture_output=True, text=True, timeout=300, cwd=BENCH.parent
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "###" in result.stdout
