#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py has the steps, timeouts and outputs): on one H100/H200 with
# only what that machine has, well under 8 minutes; `--dry-run` checks every step's plumbing on a CPU.
#   bash benchmarks/gpu_check.sh [--out DIR]            # GPU: results in benchmarks/results/ by default
#   bash benchmarks/gpu_check.sh --dry-run [--out DIR]  # CPU: results in a new temporary folder
# PYTHON selects the interpreter (default: .venv/bin/python when there is one, else python3: on a lent
# GPU machine the image's python, whose torch/triton/transformers are the ones measured).
# GPU_CHECK_COMMIT names the commit when the tree has no .git (a copy sent to a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
