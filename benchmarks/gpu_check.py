"""The GPU check: every step in its own process with its own timeout, results as one JSON summary, a
log, the kernel tests' JUnit XML and PNG plots. `benchmarks/gpu_check.sh` runs this file.

    python benchmarks/gpu_check.py [--out DIR]          # on an H100/H200: well under 8 minutes
    python benchmarks/gpu_check.py --dry-run [--out DIR]  # on a CPU: every step's plumbing, ~1-2 min

Steps (name, timeout in seconds; the timeouts sum to `TOTAL_TIMEOUT_S` < 8 minutes):
  install           this checkout beside the machine's own torch (pip --no-deps --no-build-isolation
                    --no-index -e .), liger-kernel from `.wheels/` into a private folder when its wheel
                    is there (`make gpu-wheels`), else reported absent; the environment record
  kernel_tests      tests/kernels/test_kernel_*.py compiled (TRITON_INTERPRET unset: bf16 bit-equality, the
                    torch.compile / opcheck tests against compiled kernels), pytest-xdist when present
  rotary            gpu_check_rotary.py
  window_attention  gpu_check_attention.py
  vision_tower      gpu_check_tower.py
  decode            gpu_check_decode.py ("unavailable" when generate has no compile= option)
  latents           gpu_check_latents.py (the 7B tower over photos: transformers' loop vs `latents`)
  plots             gpu_check_plots.py
Outputs in DIR (default benchmarks/results/ on a GPU, a new temporary folder for a dry run), at most 7
files, all named <prefix>*: <prefix>.json (the summary, rewritten after every step, so a run cut
short still leaves every finished step), <prefix>.log (every step's full output), the JUnit XML and
one PNG per measured step; prefix = gpu_check-<card> (gpu_check-dry-run for a dry run). Exit status 1
when a step failed or timed out; a step whose feature is missing in this build ("unavailable") or
that a dry run cannot run ("skipped-by-dry-run") is not a failure, and says why. A dry run gives
each step `DRY_RUN_TIMEOUT_FACTOR` times its GPU timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
LIGER_VERSION = "0.8.5"  # the wheel whose qwen2vl_mrope signature the rotary step was written against
WHEELS = REPO / ".wheels"
DRY_RUN_KERNEL_TESTS = [
    "tests/kernels/test_kernel_registry.py::test_unknown_names_fail_clearly",
    "tests/kernels/test_kernel_registry.py::test_signature_covers_int64_pointers_and_names_unknown_dtypes",
]


@dataclass(frozen=True)
class Step:
    name: str
    timeout_s: int
    script: str | None  # benchmarks/<script> --json PATH [--dry-run]; None: built in here


STEPS = (
    Step("install", 40, None),
    Step("kernel_tests", 95, None),
    Step("rotary", 45, "gpu_check_rotary.py"),
    Step("window_attention", 55, "gpu_check_attention.py"),
    Step("vision_tower", 135, "gpu_check_tower.py"),
    Step("decode", 50, "gpu_check_decode.py"),
    Step("latents", 45, "gpu_check_latents.py"),
    Step("plots", 10, None),
)
TOTAL_TIMEOUT_S = sum(step.timeout_s for step in STEPS)
assert TOTAL_TIMEOUT_S < 8 * 60, TOTAL_TIMEOUT_S
# a dry run's pace is the Triton interpreter's and a small, often shared CPU's: its steps get more time
# (it checks plumbing, not the GPU budget)
DRY_RUN_TIMEOUT_FACTOR = 4


def slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


class Run:
    """One run of the check: where it writes, the environment its steps get, the summary so far."""

    def __init__(self, out: Path, dry_run: bool) -> None:
        self.out, self.dry_run = out, dry_run
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check-work-"))  # step JSONs, liger's folder
        self.env = dict(os.environ)
        if dry_run:
            self.env["TRITON_INTERPRET"] = "1"
        else:
            self.env.pop("TRITON_INTERPRET", None)
        self.env.pop("QWENVL_MIN_KERNELS", None)  # the steps choose their kernels explicitly
        self.env["PYTHONUNBUFFERED"] = "1"
        self.prefix = "gpu_check-dry-run" if dry_run else "gpu_check"  # + the card, once known
        self.summary: dict = {"mode": "dry-run" if dry_run else "gpu", "steps": {}, "env": None,
                              "timeouts_s": {s.name: s.timeout_s for s in STEPS},
                              "total_timeout_s": TOTAL_TIMEOUT_S,
                              "dry_run_timeout_factor": DRY_RUN_TIMEOUT_FACTOR if dry_run else None}  # fmt: skip
        self.log_lines: list[str] = []

    def timeout_s(self, step: Step) -> int:
        return step.timeout_s * (DRY_RUN_TIMEOUT_FACTOR if self.dry_run else 1)

    # ---- running one process with a timeout ------------------------------------------------------
    def call(self, name: str, argv: list[str], timeout_s: float) -> tuple[int | None, str]:
        """(exit status or None when it timed out, its output); the whole process group is killed on
        timeout (pytest-xdist workers, compile workers)."""
        with tempfile.TemporaryFile("w+") as output:
            process = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=output, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, text=True)  # fmt: skip
            try:
                status: int | None = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                status = None
            output.seek(0)
            text = output.read()
        self.log_lines.append(f"===== {name}: {' '.join(argv)}\n{text}\n")
        return status, text

    # ---- steps -------------------------------------------------------------------------------------
    def install(self, step: Step) -> tuple[str, dict]:
        deadline = time.monotonic() + self.timeout_s(step)
        details: dict = {}
        python = sys.executable
        if self.dry_run:
            details["project"] = "skipped-by-dry-run: the dry run uses the checkout this python already has"
        else:
            pip = [
                python,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
            ]
            status, text = self.call("install project", [*pip, "-e", str(REPO)], deadline - time.monotonic())
            details["project"] = "installed editable (--no-deps) into this python"
            if status != 0:  # e.g. a read-only environment: a copy of this tree into a private folder
                site = self.work / "project"
                argv = [*pip, "--target", str(site), str(REPO)]
                status, second = self.call(
                    "install project (private folder)", argv, deadline - time.monotonic()
                )
                if status != 0:
                    return "failed", {
                        "project": f"pip install failed: -e: {text[-1500:]}; --target: {second[-1500:]}"
                    }
                self.add_path(site)
                details["project"] = (
                    f"installed a copy into a private folder (pip install -e . failed: {text[-500:]})"
                )
        details["liger_kernel"] = self.install_liger(deadline)
        # where qwenvl_min imports from (this checkout, or the install is wrong) and the environment
        probe = ("import sys, json; sys.path.insert(0, 'benchmarks'); import _common, qwenvl_min.kernels as k; "
                 "print(json.dumps(dict(_common.environment(), kernels_from=k.__file__)))")  # fmt: skip
        status, text = self.call("environment", [python, "-c", probe], deadline - time.monotonic())
        if status != 0:
            return "failed", {**details, "environment": text[-2000:]}
        env = json.loads(text.strip().splitlines()[-1])
        if not env.pop("kernels_from").startswith((str(REPO), str(self.work))):
            return "failed", {**details, "import": f"qwenvl_min does not import from {REPO}: {text[-2000:]}"}
        self.summary["env"] = env
        if not self.dry_run:
            self.prefix = f"gpu_check-{slug(env['device'])}"
        return "passed", details

    def install_liger(self, deadline: float) -> str:
        wheels = sorted(WHEELS.glob("liger_kernel-*.whl"))
        if not wheels:
            return (f"absent: no liger_kernel wheel in {WHEELS.name}/ (run `make gpu-wheels` and carry "
                    f"{WHEELS.name}); the rotary step reports liger as unavailable")  # fmt: skip
        site = self.work / "site"
        argv = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                str(site), str(wheels[-1])]  # fmt: skip
        status, text = self.call("install liger", argv, deadline - time.monotonic())
        if status != 0:
            return f"absent: installing {wheels[-1].name} failed ({status}): {text[-1000:]}"
        self.add_path(site)
        note = (
            ""
            if wheels[-1].name.startswith(f"liger_kernel-{LIGER_VERSION}-")
            else f" (pinned {LIGER_VERSION})"
        )
        return f"installed {wheels[-1].name} into a private folder{note}"

    def add_path(self, folder: Path) -> None:
        """Put `folder` first on the steps' PYTHONPATH."""
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), self.env.get("PYTHONPATH")]))

    def kernel_tests(self, step: Step) -> tuple[str, dict]:
        xml = self.out / f"{self.prefix}-kernel-tests.xml"
        argv = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={xml}",
            "--durations=5",
        ]
        if self.dry_run:
            argv += DRY_RUN_KERNEL_TESTS  # the interpreter: a couple of quick tests, same plumbing
        else:
            argv += sorted(
                str(p.relative_to(REPO)) for p in (REPO / "tests" / "kernels").glob("test_kernel_*.py")
            )
            if self.call("xdist?", [sys.executable, "-c", "import xdist"], 30)[0] == 0:
                argv += ["-n", str(min(8, os.cpu_count() or 1))]
        status, text = self.call(step.name, argv, self.timeout_s(step))
        counts = junit_counts(xml) if xml.exists() else {"junit": "not written"}
        details = {"command": " ".join(argv[1:]), "counts": counts, "junit": xml.name, "tail": text[-3000:]}
        if status is None:
            return "timed out", details
        return ("passed" if status == 0 else "failed"), details

    def script(self, step: Step) -> tuple[str, dict]:
        result = self.work / f"{step.name}.json"
        argv = [sys.executable, str(BENCH / step.script), "--json", str(result)]
        argv += ["--dry-run"] if self.dry_run else []
        status, text = self.call(step.name, argv, self.timeout_s(step))
        details: dict = {"command": " ".join(argv[1:]), "tail": text[-3000:]}
        if result.exists():
            details["result"] = json.loads(result.read_text())
        if status is None:
            return "timed out", details
        if status != 0:
            return "failed", details
        if "result" not in details:
            return "failed", {**details, "error": "the step exited 0 but wrote no JSON"}
        if details["result"]["notes"].get("status") == "unavailable":
            return "unavailable", details
        return "passed", details

    def plots(self, step: Step) -> tuple[str, dict]:
        self.write_summary()
        argv = [sys.executable, str(BENCH / "gpu_check_plots.py"), str(self.summary_path), str(self.out)]
        status, text = self.call(step.name, argv, self.timeout_s(step))
        if status != 0:
            return ("timed out" if status is None else "failed"), {"tail": text[-3000:]}
        return "passed", {"files": json.loads(text[text.index("{") :])}

    # ---- the whole run -----------------------------------------------------------------------------
    @property
    def summary_path(self) -> Path:
        return self.out / f"{self.prefix}.json"

    def write_summary(self) -> None:
        self.summary["prefix"] = self.prefix
        self.summary["passed"] = all(
            s["status"] in ("passed", "unavailable", "skipped-by-dry-run")
            for s in self.summary["steps"].values()
        )
        partial = self.summary_path.with_name(self.summary_path.name + ".partial")
        partial.write_text(json.dumps(self.summary, indent=1, default=str) + "\n")
        partial.replace(self.summary_path)
        (self.out / f"{self.prefix}.log").write_text("".join(self.log_lines))

    def run(self) -> bool:
        try:
            return self.run_steps()
        finally:  # step JSONs are in the summary; the private install folders go with the run
            shutil.rmtree(self.work, ignore_errors=True)

    def run_steps(self) -> bool:
        for step in STEPS:
            print(f"== {step.name} (timeout {self.timeout_s(step)} s)", flush=True)
            start = time.monotonic()
            runner = {"install": self.install, "kernel_tests": self.kernel_tests, "plots": self.plots}
            try:
                status, details = runner.get(step.name, self.script)(step)
            except Exception as error:  # the driver's own failure in a step is that step's failure
                status, details = "failed", {"error": f"{type(error).__name__}: {error}"}
            seconds = time.monotonic() - start
            self.summary["steps"][step.name] = {"status": status, "seconds": round(seconds, 1),
                                                "timeout_s": self.timeout_s(step), **details}  # fmt: skip
            print(f"== {step.name}: {status} after {seconds:.0f} s", flush=True)
            if step.name == "install" and status != "passed":
                print("== install failed: the other steps need it; stopping", flush=True)
                break
            self.write_summary()
        self.write_summary()
        self.print_report()
        return self.summary["passed"]

    def print_report(self) -> None:
        env = self.summary["env"] or {}
        print(f"\n== {self.summary['mode']} on {env.get('device')} (driver {env.get('driver')}); torch "
              f"{env.get('torch')}, triton {env.get('triton')}, transformers {env.get('transformers')}, "
              f"liger {env.get('liger_kernel')}; commit {env.get('commit')}")  # fmt: skip
        for name, step in self.summary["steps"].items():
            result = step.get("result") or {}
            missing = "; ".join(f"{m['provider']}: {m['kind']}" for m in result.get("unavailable", []))
            print(
                f"  {name:17s} {step['status']:18s} {step['seconds']:6.1f} s / {step['timeout_s']} s  {missing}"
            )
        print(f"== {'PASSED' if self.summary['passed'] else 'FAILED'}; results in {self.out}: "
              f"{', '.join(sorted(p.name for p in self.out.glob(self.prefix + '*')))}")  # fmt: skip


def junit_counts(path: Path) -> dict:
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    totals = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    totals["seconds"] = round(sum(float(s.get("time", 0)) for s in suites), 1)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU plumbing check of every step")
    parser.add_argument("--out", type=Path, help="output folder (default: see the module docstring)")
    parser.add_argument("--fetch-wheels", action="store_true",
                        help=f"download liger-kernel {LIGER_VERSION} into {WHEELS.name}/ (needs an index) and exit")  # fmt: skip
    args = parser.parse_args()
    if args.fetch_wheels:
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                "--dest", str(WHEELS), f"liger-kernel=={LIGER_VERSION}"]  # fmt: skip
        sys.exit(subprocess.run(argv).returncode)
    out = args.out or (
        Path(tempfile.mkdtemp(prefix="gpu_check-dry-run-")) if args.dry_run else BENCH / "results"
    )
    out.mkdir(parents=True, exist_ok=True)
    sys.exit(0 if Run(out.resolve(), args.dry_run).run() else 1)


if __name__ == "__main__":
    main()
