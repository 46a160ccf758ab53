"""The GPU check's CPU dry run (`bash benchmarks/gpu_check.sh --dry-run`): every step runs for real on
tiny shapes (our kernels under the Triton interpreter), writes its JSON, and the summary, log, JUnit
XML and PNG plots come out; CUDA-only baselines are reported as skipped with a reason, features this
build lacks as unavailable with a reason. What a GPU run would lose to a typo in a step's plumbing is
lost here instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MEASURED = ("rotary", "window_attention", "vision_tower")
DEVICE_FILE_LIMIT = 8  # files a lent GPU machine sends back from one run


def test_dry_run_exercises_every_step(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "QWENVL_MIN_KERNELS")}
    env["PYTHON"] = sys.executable
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = json.loads((out / "gpu_check-dry-run.json").read_text())
    assert summary["mode"] == "dry-run" and summary["passed"]
    assert summary["total_timeout_s"] == sum(summary["timeouts_s"].values()) < 8 * 60
    assert summary["env"]["torch"] and summary["env"]["triton"] and summary["env"]["transformers"]
    steps = summary["steps"]
    assert list(steps) == [
        "install",
        "kernel_tests",
        "rotary",
        "window_attention",
        "vision_tower",
        "decode",
        "latents",
        "plots",
    ]
    for name, step in steps.items():
        assert step["status"] in ("passed", "unavailable"), (name, step)
        assert step["seconds"] <= step["timeout_s"]

    # the kernel tests ran (interpreted) and their JUnit XML was read back
    counts = steps["kernel_tests"]["counts"]
    assert counts["tests"] >= 1 and counts["failures"] == counts["errors"] == counts["skipped"] == 0, counts
    assert (out / steps["kernel_tests"]["junit"]).is_file()
    assert steps["install"]["project"].startswith("skipped-by-dry-run")

    for name in MEASURED:
        result = steps[name]["result"]
        assert result["mode"] == "dry-run" and result["rows"], name
        assert all(row.get("us") or row.get("ms") for row in result["rows"] if "error" not in row), name
        assert not [row for row in result["rows"] if "error" in row], name
        assert steps["plots"]["files"][name] == f"gpu_check-dry-run-{name}.png"
        assert (out / f"gpu_check-dry-run-{name}.png").stat().st_size > 10_000

    # ours and every baseline that can run on a CPU have rows; the rest say why not
    rotary = steps["rotary"]["result"]
    providers = {row["provider"] for row in rotary["rows"]}
    assert {"ours-triton", "ours-triton-inplace", "torch", "hf"} <= providers
    assert "liger" in providers or any(
        m["provider"] == "liger" and m["reason"] for m in rotary["unavailable"]
    )
    attention = steps["window_attention"]["result"]
    assert {(r["provider"], r["direction"]) for r in attention["rows"]} == {
        (p, d) for p in ("ours-triton", "torch", "sdpa-padded", "hf-per-window") for d in ("fwd", "fwd+bwd")
    }
    assert [m["provider"] for m in attention["unavailable"] if m["kind"] == "skipped-by-dry-run"] == [
        "torch-varlen-flash"
    ]
    tower = steps["vision_tower"]["result"]
    assert [r["impl"] for r in tower["rows"] if r["tower"] == "tiny-qwen2.5-vl"] == [
        "ours-eager",
        "ours-eager-torch",
        "ours-compiled",
        "hf-sdpa",
    ]
    # the Qwen3-VL-8B-width tower's rows (tiny in a dry run): its kernels, its torch path, transformers
    assert [r["impl"] for r in tower["rows"] if r["tower"] == "tiny-qwen3-vl"] == [
        "ours-eager",
        "ours-eager-torch",
        "hf-sdpa",
    ]
    assert all(r["agrees"] for r in tower["rows"])

    # this build's generate has compile=: the decode step must really run both paths (the step's
    # "not available in this build" branch is for an older checkout copied onto a device machine)
    decode = steps["decode"]
    assert decode["status"] == "passed", decode
    assert [r["impl"] for r in decode["result"]["rows"]] == ["eager", "compiled"]
    assert (out / "gpu_check-dry-run-decode.png").is_file()

    latents = steps["latents"]["result"]
    assert [r["case"] for r in latents["rows"]][:2] == ["56x56", "112x112"]
    assert all(r["relative_error_vs_hf"] <= 1e-5 for r in latents["rows"][:2])  # fp32: the same tower
    assert latents["rows"][2]["fraction_of_matmul"] > 0

    files = sorted(p.name for p in out.iterdir())
    assert all(name.startswith("gpu_check-dry-run") for name in files), files
    assert len(files) <= DEVICE_FILE_LIMIT and "gpu_check-dry-run.log" in files
    assert "===== rotary" in (out / "gpu_check-dry-run.log").read_text()
