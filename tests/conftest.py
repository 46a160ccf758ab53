"""Shared test setup. Kernel tests run the Triton kernels on CPU under the interpreter."""

import os

import torch
from hypothesis import settings

# CI (the environment variable CI=true, which .ci/run sets) draws the same hypothesis examples on every
# run, so a red CI is reproducible and never an unlucky draw; local runs keep exploring new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")

if not torch.cuda.is_available():
    # must be set before any @triton.jit function is defined
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_terminal_summary(terminalreporter):
    """The qwen-vl-utils comparison counts, when that parity test ran (tests/inputs/test_qwen_vl_utils_parity.py)."""
    import sys

    oracle = sys.modules.get("qwen_vl_utils_oracle")
    if oracle is None or not oracle.TALLY:
        return
    compared = sum(n for n, _ in oracle.TALLY.values())
    equal = sum(e for _, e in oracle.TALLY.values())
    drawn = sum(n for kind, (n, _) in oracle.TALLY.items() if kind.endswith(oracle.DRAWN))
    kinds = ", ".join(f"{kind} {e}/{n}" for kind, (n, e) in sorted(oracle.TALLY.items()))
    terminalreporter.write_line(
        f"qwen-vl-utils parity: {compared} cases compared, {equal} equal: {compared - drawn} fixed cases + "
        f"{drawn} drawn by hypothesis ({kinds})"
    )
