#!/usr/bin/env bash
# The prepared device check for a CUDA machine: the CUDA path of pretrain, embed and probe, each
# part run even when another fails, then a summary table (OUTDIR/summary.md); about 10 minutes on
# one H100. --dry: the same parts on the CPU at tiny sizes (tests/test_benchmarks.py runs it).
# Usage: bash benchmarks/gpu_check.sh [--dry] [OUTDIR]   (never needed for CI)
# Parts and what each measures: benchmarks/gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
