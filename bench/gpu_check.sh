#!/usr/bin/env bash
# `make gpu-check`: foveal's kernels on a lent GPU inside a time budget (bench/gpu_check.py).
#   bash bench/gpu_check.sh --plan   the phases, their cases and time limits (needs no GPU)
#   bash bench/gpu_check.sh          run them: GPU_CHECK_BUDGET_S (default 480), BENCH_SUITE,
#                                    GPU_CHECK_PHASES, GPU_CHECK_RESUME, OUT; see bench/README.md
# PYTHON picks the interpreter: default .venv/bin/python where it exists, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" -m foveal.bench.gpu_check "$@"
