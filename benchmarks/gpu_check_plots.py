"""PNG plots of a `gpu_check.py` summary: one figure per step that has rows (matplotlib, Agg backend).

    python benchmarks/gpu_check_plots.py SUMMARY.json OUT_DIR

Every figure's title names the card and the versions it was measured with (H100 and H200 figures are
not comparable); a dry run's figures say so in the title.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _title(what: str, summary: dict) -> str:
    env = summary["env"]
    versions = f"torch {env['torch']}, triton {env['triton']}, transformers {env['transformers']}"
    mode = "DRY RUN (CPU plumbing, not a measurement): " if summary["mode"] == "dry-run" else ""
    return f"{mode}{what}\n{env['device']}; {versions}"


def _bars(ax, groups: list[str], series: dict[str, list[float | None]], ylabel: str) -> None:
    """Grouped bars: one group per label, one bar per series (None: no bar)."""
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [0 if v is None else v for v in values], width, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def _grouped(rows: list[dict], group: str, series: str, value: str) -> tuple[list[str], dict]:
    groups = list(dict.fromkeys(f"{r[group]}" for r in rows))
    names = list(dict.fromkeys(r[series] for r in rows))
    table = {name: [None] * len(groups) for name in names}
    for r in rows:
        table[r[series]][groups.index(f"{r[group]}")] = r.get(value)
    return groups, table


def plot_rotary(step: dict, summary: dict, path: Path) -> None:
    rows = [dict(r, group=f"{r['case']} {r['dtype']}") for r in step["rows"] if r.get("GB/s")]
    groups, table = _grouped(rows, "group", "provider", "GB/s")
    fig, ax = plt.subplots(figsize=(12, 5))
    _bars(ax, groups, table, "effective GB/s (q, k read + written, tables read once)")
    ax.set_title(
        _title("rotary: ours vs torch / transformers / liger (higher is better)", summary), fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_attention(step: dict, summary: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, direction in zip(axes, ("fwd", "fwd+bwd")):
        rows = [r for r in step["rows"] if r["direction"] == direction and r.get("us")]
        groups, table = _grouped(rows, "case", "provider", "us")
        _bars(ax, groups, table, f"{direction} time (us, log scale, lower is better)")
        ax.set_yscale("log")  # the per-window loop and the kernels differ by orders of magnitude
        ax.set_title(direction, fontsize=9)
    fig.suptitle(_title("Qwen2.5-VL vision window attention (head_dim 80)", summary), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tower(step: dict, summary: dict, path: Path) -> None:
    rows = step["rows"]
    # e.g. "qwen2.5-7b ours-eager", "qwen3-8b hf-sdpa" (dry run: "qwen3 hf-sdpa")
    names = [f"{r['tower'].removeprefix('tiny-').replace('-vl', '')} {r['impl']}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    axes[0].bar(names, [r["ms"] for r in rows])
    axes[0].set_ylabel("forward time (ms)")
    axes[1].bar(names, [r["peak_mem_gb"] for r in rows])
    axes[1].set_ylabel("peak memory above baseline (GiB)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=35, labelsize=7)
    what = "vision towers " + ", ".join(
        f"{t['preset']} {t['image']} {t['dtype']}" for t in step["notes"]["towers"]
    )
    fig.suptitle(_title(what, summary), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_decode(step: dict, summary: dict, path: Path) -> None:
    rows = step["rows"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.bar([f"{r['impl']} ({r['compile']})" for r in rows], [r["ms_per_token"] for r in rows])
    ax.set_ylabel("decode time per token (ms)")
    ax.set_title(_title(f"decode, {step['notes']['model']}", summary), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLOTS = {
    "rotary": plot_rotary,
    "window_attention": plot_attention,
    "vision_tower": plot_tower,
    "decode": plot_decode,
}


def write_plots(summary: dict, out_dir: Path, prefix: str) -> dict[str, str]:
    """One PNG per step with rows; returns step -> file name, or the reason there is none."""
    written = {}
    for name, plot in PLOTS.items():
        step = summary["steps"].get(name, {}).get("result")
        if not step or not step.get("rows"):
            written[name] = "no plot: the step has no rows (see its status and unavailable list)"
            continue
        path = out_dir / f"{prefix}-{name}.png"
        plot(step, summary, path)
        written[name] = path.name
    return written


def main() -> None:
    summary_path, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    summary = json.loads(summary_path.read_text())
    print(json.dumps(write_plots(summary, out_dir, summary["prefix"]), indent=1))


if __name__ == "__main__":
    main()
