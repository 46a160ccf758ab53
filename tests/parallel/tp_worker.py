"""One rank of the 2-rank tensor-parallel checks (spawned by tests/parallel/test_tensor_parallel.py).

    RANK=r WORLD_SIZE=2 LOCAL_RANK=r MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/parallel/tp_worker.py WORK

Every check compares the TP=2 model with the single-process model built from the same weights in this
same process and records the largest |difference| (or an equality) in WORK/rank{r}.json; the test asserts
on them. WORK holds what the parent prepared: hf/ (a sharded HF checkpoint), ours/ (converted, with a
tokenizer) and images for the CLI phase, whose outputs go to WORK/dp_latents and WORK/run{r}.txt.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))  # the shared test helpers
from hf_models import make_prompt, randomize_, tiny_config  # noqa: E402

from qwenvl_min import QwenVL
from qwenvl_min.generate import generate
from qwenvl_min.hf.load import load
from qwenvl_min.parallel import init_distributed, load_sharded, parallelize, tp_mesh

DIFFS: dict[str, float] = {}
EQUAL: dict[str, bool] = {}


def record(name: str, a, b) -> None:
    if hasattr(a, "probs"):  # SegmentMaps: compare every group
        DIFFS[name] = max(float((x - y).abs().max()) for x, y in zip(a.probs, b.probs))
        EQUAL[name + ".shape"] = [x.shape for x in a.probs] == [y.shape for y in b.probs]
        return
    EQUAL[name + ".shape"] = tuple(a.shape) == tuple(b.shape)
    DIFFS[name] = float((a.float() - b.float()).abs().max()) / max(1.0, float(a.abs().max()))


def prompt(cfg, seed: int):
    """A left-padded batch of two rows with two images and a video."""
    rows = [
        [2, ("image", (1, 8, 12)), 3],
        [2, ("video", (2, 8, 8)), 2, ("image", (1, 4, 4)), 1],
    ]
    lengths = [make_prompt(cfg, [row]).input_ids.shape[1] for row in rows]  # Qwen3 videos are longer
    rows[0].insert(0, ("pad", lengths[1] - lengths[0]))
    seconds = [1.0] if cfg.model_type == "qwen2_5_vl" else None
    return make_prompt(cfg, rows, seed=seed, second_per_grid_ts=seconds)


def model_checks(tag: str, cfg, mesh) -> None:
    ref = QwenVL(cfg, kernels="torch").eval()
    randomize_(ref, seed=3)
    tp = parallelize(copy.deepcopy(ref), mesh)
    p = prompt(cfg, seed=1)
    ids, kw = p.input_ids, p.ours()
    dense = [i for i in range(cfg.text.num_layers) if not cfg.text.is_sparse(i)]  # MoE: layer 1 only
    sharded = [
        "visual.blocks.0.attn.qkv",
        "visual.blocks.1.attn.probs",
        "visual.blocks.2.attn.proj.input",
        "text.layers.0.attn.k_proj",
        "text.layers.1.attn.probs",
        f"text.layers.{dense[-1]}.mlp.down_proj.input",
        f"text.layers.{dense[0]}.mlp.gate_proj.input",  # a full tensor that arrives as a Replicate DTensor
    ]
    full = ["visual.merger.input", "visual.merger", "text.norm"]
    if cfg.vision.deepstack_indexes:  # Qwen3-VL: DeepStack mergers like the main one, q/k norms replicated
        sharded += ["visual.deepstack_mergers.1.fc1"]
        full += ["visual.deepstack_mergers.0", "text.layers.0.deepstack.input", "text.layers.1.attn.k_norm"]
    if cfg.text.moe is not None:  # experts sharded on their width, their output all-reduced
        full += ["text.layers.0.mlp.router", "text.layers.2.mlp.experts", "text.layers.2.mlp.experts.input"]
    full += [f"text.layers.{i}" for i in range(cfg.text.num_layers)]
    names = full + sharded
    with torch.inference_mode():
        with ref.taps(read=names) as want:
            a = ref(ids, **kw).logits
        with tp.taps(read=names) as got:
            b = tp(ids, **kw).logits
        valid = p.valid
        record(f"{tag}.logits", a[valid], b[valid])
        for name in names:
            x, y = want.cache[name], got.cache[name]
            if ".mlp.experts" in name:  # the experts see the tokens flattened: (B * T, E)
                x, y = x[valid.reshape(-1)], y[valid.reshape(-1)]
            elif name.startswith("text.") and not name.endswith(".probs"):
                x, y = x[valid], y[valid]  # padded slots hold anything
            elif name.endswith(".probs") and name.startswith("text."):
                x, y = x * valid[:, None, :, None], y * valid[:, None, :, None]
            record(f"{tag}.tap.{name}", x, y)

        # replacing: a full tap point and a sharded one, given as single-process tensors / functions
        replace = {
            "visual.blocks.0.attn.qkv": lambda x: x * 0.5,
            "text.layers.1.attn.probs": lambda m: torch.ones_like(m) / m.shape[-1],
            "text.layers.1": torch.zeros_like,
        }
        with ref.taps(replace=replace):
            a2 = ref(ids, **kw).logits
        with tp.taps(replace=replace):
            b2 = tp(ids, **kw).logits
        record(f"{tag}.replaced_logits", a2[valid], b2[valid])
        EQUAL[f"{tag}.replacement_changes_logits"] = bool((a2 - a).abs().max() > 1e-3)

        # greedy generation on the left-padded batch: identical tokens
        ta = generate(ref, ids, **kw, max_new_tokens=6)
        tb = generate(tp, ids, **kw, max_new_tokens=6)
        EQUAL[f"{tag}.generate_tokens"] = torch.equal(ta, tb)

        # the TP model is the plain model: same class, the TP plan's hooks are not the user's, so compiled
        # generation runs (aot_eager: dynamo's capture without inductor's C++ build) and gives the tokens
        EQUAL[f"{tag}.class_unchanged"] = type(tp) is QwenVL
        tc = generate(tp, ids, **kw, max_new_tokens=6, compile="aot_eager")
        EQUAL[f"{tag}.compiled_generate_tokens"] = torch.equal(tc, tb)

        # taps during generation (keep="all": one record per forward) read the single-process tensors
        during = ["text.layers.1", "text.layers.1.attn.probs", "text.layers.0.attn.k_proj"]
        with ref.taps(read=during, keep="all") as want_all:
            generate(ref, ids, **kw, max_new_tokens=3)
        with tp.taps(read=during, keep="all") as got_all:
            generate(tp, ids, **kw, max_new_tokens=3)
        EQUAL[f"{tag}.keep_all_calls"] = len(want_all.calls) == len(got_all.calls) == 3
        for call, (x_call, y_call) in enumerate(zip(want_all.calls, got_all.calls)):
            for name in during:
                x, y = x_call[name], y_call[name]
                if call == 0 and name.endswith(".probs"):  # the prefill's padded query rows hold anything
                    x, y = x * valid[:, None, :, None], y * valid[:, None, :, None]
                elif call == 0:
                    x, y = x[valid], y[valid]
                record(f"{tag}.keep_all.{call}.{name}", x, y)

        # the Triton kernels (interpreted on CPU) on local heads: rotary + window attention in the tower
        if cfg.model_type == "qwen2_5_vl" and tag.endswith("untied"):
            tp.set_kernels("triton")
            grid = torch.tensor([[1, 12, 16]])
            pixels = torch.randn(192, cfg.vision.patch_dim, generator=torch.Generator().manual_seed(5))
            record(f"{tag}.triton_vision", ref.visual(pixels, grid), tp.visual(pixels, grid))
            tp.set_kernels("torch")


def load_checks(work: Path, mesh) -> None:
    for tag, path, reference in (
        ("load_hf", work / "hf", lambda: QwenVL.from_hf(*_hf_dir(work / "hf"))),
        ("load_ours", work / "ours", lambda: load(work / "ours")),
        ("load_hf_moe", work / "hf_moe", lambda: QwenVL.from_hf(*_hf_dir(work / "hf_moe"))),  # hub layout
    ):
        ref = reference().eval()
        ref.set_kernels("torch")
        tp = load_sharded(path, mesh, kernels="torch")
        p = prompt(ref.config, seed=2)
        with torch.inference_mode():
            a = ref(p.input_ids, **p.ours()).logits
            b = tp(p.input_ids, **p.ours()).logits
        record(f"{tag}.logits", a[p.valid], b[p.valid])
        local = sum(t.to_local().numel() if hasattr(t, "to_local") else t.numel() for t in tp.parameters())
        EQUAL[f"{tag}.local_params_below_full"] = local < 0.75 * sum(t.numel() for t in ref.parameters())


def _hf_dir(directory: Path):
    from safetensors.torch import load_file

    state = {}
    for file in sorted(directory.glob("*.safetensors")):
        state |= load_file(file)
    return json.loads((directory / "config.json").read_text()), state


def cli_checks(work: Path, rank: int) -> None:
    from qwenvl_min.cli.main import main

    images = sorted(str(p) for p in (work / "images").iterdir())
    args = ["latents", "--model", str(work / "ours"), "--taps", "visual.merger.input,text.layers.1"]
    args += [
        "--batch-size",
        "1",
    ]  # one input per forward, as the one-process run it is compared with bit for bit
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*args, "--out", str(work / "dp_latents"), "--no-progress", *images])
    (work / f"latents{rank}.txt").write_text(f"{code}\n{out.getvalue()}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            ["run", "--tp", "2", "--model", str(work / "ours"), "--image", images[0], "--prompt", "describe it",
             "--max-new-tokens", "6"]
        )  # fmt: skip
    (work / f"run{rank}.txt").write_text(f"{code}\n{out.getvalue()}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            ["run", "--tp", "2", "--compile", "aot_eager", "--model", str(work / "ours"), "--image", images[0],
             "--prompt", "describe it", "--max-new-tokens", "6"]
        )  # fmt: skip
    (work / f"run_compiled{rank}.txt").write_text(f"{code}\n{out.getvalue()}")


def main() -> None:
    work = Path(sys.argv[1])
    torch.manual_seed(0)
    context = init_distributed("cpu")
    mesh = tp_mesh(context, 2)
    for family, tied in (
        ("qwen2_5_vl", False),
        ("qwen2_vl", True),
        ("qwen3_vl", False),
        ("qwen3_vl_moe", False),
    ):
        model_checks(f"{family}.{'tied' if tied else 'untied'}", tiny_config(family, tied), mesh)
    # one kv head for two ranks: k/v replicated, each rank keeps the head its query heads use
    cfg = tiny_config("qwen2_5_vl", True)
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, num_kv_heads=1))
    model_checks("qwen2_5_vl.tied.kv1", cfg, mesh)
    load_checks(work, mesh)
    cli_checks(work, context.rank)
    (work / f"rank{context.rank}.json").write_text(json.dumps({"diffs": DIFFS, "equal": EQUAL}))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
