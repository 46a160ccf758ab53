"""Memory of `output_attentions=True`: ours against transformers' eager attention (its only path that
returns maps), on a text-only prompt where the maps dominate.

    python benchmarks/bench_output_attentions.py                 # T = 1536, 16 heads, 4 layers, fp32 + bf16
    python benchmarks/bench_output_attentions.py --tokens 1024 --layers 2

Each measurement runs in a child process of its own: build the model (random weights), one warm-up
forward on 16 tokens, then one forward on T tokens, with or without output_attentions; the figure is the
rise of the process's peak resident set (VmHWM) during that forward. The maps returned take
L x B x H x T x T x (bytes of the dtype) ("kept"); the rest of the rise is what the forward needs while
it runs (for the maps: the layer being computed). Results go to
benchmarks/results/output_attentions-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import environment, print_table, write_results

MB = 1024**2

_CHILD = """
import dataclasses, json, sys, torch
torch.set_num_threads(2)
from qwenvl_min import Config, QwenVL
impl, dtype, tokens, layers, heads = sys.argv[1], getattr(torch, sys.argv[2]), *map(int, sys.argv[3:6])
base = Config.preset("tiny-qwen2-vl")
text = dataclasses.replace(base.text, vocab_size=1024, hidden_size=heads * 16, intermediate_size=heads * 32,
                           num_layers=layers, num_heads=heads, num_kv_heads=2)
cfg = dataclasses.replace(base, text=text, vision=dataclasses.replace(base.vision, out_width=heads * 16))
def hwm():
    return int([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]) * 1024
if impl == "transformers":
    import transformers
    model = transformers.Qwen2VLForConditionalGeneration._from_config(
        transformers.Qwen2VLConfig(**cfg.to_hf()), attn_implementation="eager")
    extra = {"use_cache": False}
else:
    model = QwenVL(cfg, kernels="torch")
    extra = {}
model = model.to(dtype).eval()
maps = sys.argv[6] == "1"
with torch.no_grad():
    model(torch.randint(0, 240, (1, 16)), output_attentions=maps, **extra)  # warm-up: libraries, allocator
    before = hwm()
    ids = torch.randint(0, 240, (1, tokens))  # below the special ids of the preset
    out = model(ids, output_attentions=maps, **extra)
    rise = hwm() - before
    kept = sum(a.numel() * a.element_size() for a in out.attentions) if maps else 0
print(json.dumps({"rise": rise, "kept": kept}))
"""


def child(impl: str, dtype: str, tokens: int, layers: int, heads: int, maps: bool) -> dict:
    argv = [sys.executable, "-c", _CHILD, impl, dtype, str(tokens), str(layers), str(heads), str(int(maps))]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1536)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    args = parser.parse_args()
    one_map = args.heads * args.tokens**2  # values in one layer's (B=1, H, T, T) map
    rows = []
    for dtype in ("float32", "bfloat16"):
        for impl in ("transformers", "qwenvl-min"):
            for maps in (False, True):
                result = child(impl, dtype, args.tokens, args.layers, args.heads, maps)
                rows.append(
                    {
                        "impl": impl + (" eager" if impl == "transformers" else ""),
                        "dtype": dtype,
                        "output_attentions": maps,
                        "tokens": args.tokens,
                        "layers": args.layers,
                        "heads": args.heads,
                        "kept_mb": result["kept"] / MB,
                        "peak_rise_mb": result["rise"] / MB,
                        "one_fp32_map_mb": one_map * 4 / MB,
                    }
                )
    columns = ["impl", "dtype", "output_attentions", "kept_mb", "peak_rise_mb", "one_fp32_map_mb"]
    print_table(rows, columns)
    path = write_results("output_attentions", rows, environment(), mode="cpu peak RSS (VmHWM) rise")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
