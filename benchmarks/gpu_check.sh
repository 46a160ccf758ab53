#!/usr/bin/env bash
# One GPU check of the Triton kernels, well under 8 minutes on an H100/H200 (no internet needed):
#   1. record the card (nvidia-smi) and install this project beside the machine's own torch/triton;
#   2. run every kernel test file (tests/test_kernel_*.py) compiled (TRITON_INTERPRET unset), JUnit XML
#      into benchmarks/results/: this is where bf16 is checked bit for bit (rotary == torch's rounding)
#      and the torch.compile / opcheck tests run against compiled kernels;
#   3. run both kernel benchmarks (they verify outputs against references before timing) -> JSON.
# Every step has a timeout; a failing step is reported and the remaining steps still run; the exit
# status is non-zero if any step failed.  Usage: bash benchmarks/gpu_check.sh   (PYTHON=... to override)
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
RESULTS=benchmarks/results
mkdir -p "$RESULTS"
unset TRITON_INTERPRET QWENVL_MIN_KERNELS

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
slug=$(printf '%s' "$gpu" | tr -c '[:alnum:]' '-' | tr '[:upper:]' '[:lower:]' | sed 's/--*/-/g; s/^-//; s/-$//')
log="$RESULTS/gpu_check-$slug.log"
exec > >(tee "$log") 2>&1

echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $gpu, commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
nvidia-smi | tee "$RESULTS/nvidia-smi-$slug.txt"

failed=()
step() {  # step NAME SECONDS CMD...: run with a timeout, record a failure, keep going
    local name=$1 seconds=$2
    shift 2
    echo "== $name (timeout ${seconds}s): $*"
    local start=$SECONDS status=0
    timeout --kill-after=10 "$seconds" "$@" || status=$?
    echo "== $name: exit $status after $((SECONDS - start))s"
    if [ "$status" -ne 0 ]; then failed+=("$name (exit $status)"); fi
}

# --no-build-isolation: the build backend must come from the machine, there is no index to fetch it from
step install 120 "$PYTHON" -m pip install --no-deps --no-build-isolation --quiet -e .
step versions 60 "$PYTHON" -c 'import torch, triton, transformers as t; print("torch", torch.__version__,
    "cuda", torch.version.cuda, "triton", triton.__version__, "transformers", t.__version__)'

if "$PYTHON" -c 'import pytest, hypothesis' 2>/dev/null; then
    step kernel-tests 240 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_kernel_*.py \
        --junitxml="$RESULTS/kernel-tests-$slug.xml"
else
    echo "== kernel-tests: pytest/hypothesis are not installed here; the benchmarks below still verify outputs"
    failed+=("kernel-tests (pytest or hypothesis missing)")
fi

step bench-rotary 90 "$PYTHON" benchmarks/bench_rotary.py
step bench-window-attention 150 "$PYTHON" benchmarks/bench_window_attention.py

echo "== results in $RESULTS:"
ls -l "$RESULTS"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "== FAILED: ${failed[*]}"
    exit 1
fi
echo "== all steps passed"
