"""The module tree is the interface: plain forward hooks fire on every module that does work, see
pixel_values row order everywhere in the tower, one block's attention is swapped in one line, and the
tower compiles without graph breaks. Also the user tasks of the project's "where to change what" table
(docs/design.md): read layer 12 + pre-merge features while zeroing layer 5, in one forward."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch._dynamo
from hf_models import (
    build_pair,
    hf_window_to_input_order,
    make_prompt,
    max_err,
    randomize_,
    scale_of,
    tiny_config,
)
from torch import nn

from qwenvl_min import Config, QwenVL
from qwenvl_min.model.attention import segment_attention_torch
from qwenvl_min.model.rope import mrope_table
from qwenvl_min.model.vision import VisionAttention

FAMILIES = ["qwen2_vl", "qwen2_5_vl"]
RTOL = 1e-5  # fp32 parity rule of the project: max error <= 1e-5 of the output scale


def prompt_for(cfg: Config):
    """An image with edge windows (12x20 patches), an exact-window image (8x8) and a 2-frame video."""
    video = [("video", (2, 8, 8))]
    seconds = [1.0] if cfg.model_type == "qwen2_5_vl" else None
    rows = [[2, ("image", (1, 12, 20)), 1, ("image", (1, 8, 8)), *video, 3]]
    return make_prompt(cfg, rows, seed=4, second_per_grid_ts=seconds)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_hooks_fire_on_every_module_that_does_work(family):
    cfg = tiny_config(family, tied=family == "qwen2_vl")  # one tied, one untied head
    model = QwenVL(cfg).eval()
    fired: list[str] = []
    handles = [
        module.register_forward_hook(lambda m, a, o, name=name: fired.append(name))
        for name, module in model.named_modules()
    ]
    prompt = prompt_for(cfg)
    with torch.no_grad():
        model(prompt.input_ids, **prompt.ours())
    for handle in handles:
        handle.remove()
    containers = {name for name, m in model.named_modules() if isinstance(m, nn.ModuleList)}
    expected = {name for name, _ in model.named_modules()} - containers
    assert set(fired) == expected
    assert fired.count("visual") == 1  # the tower runs once, images and videos together
    assert fired[-1] == ""  # the root last: everything else ran inside it
    assert "lm_head" in fired  # a module also when tied to the embeddings (TiedLMHead)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_vision_module_hooks_see_row_order(family):
    """Hooks on our blocks, attention modules, MLPs and merger input equal transformers' same modules
    with its outputs put back into pixel_values row order (transformers runs Qwen2.5-VL in window order)."""
    hf, ours = build_pair(tiny_config(family, tied=True), seed=3)
    cfg = ours.config
    prompt = make_prompt(cfg, [[2, ("image", (1, 12, 20)), 1, ("image", (1, 8, 8)), 2]], seed=5)
    points = ["blocks.0.attn", "blocks.1.mlp", "blocks.2", "blocks.3.attn", "merger"]
    seen: dict[str, dict[str, torch.Tensor]] = {"ours": {}, "hf": {}}

    def record(side: str, name: str, use_input: bool):
        def hook(module, args, output):
            value = args[0] if use_input else output
            seen[side][name] = value[0] if isinstance(value, tuple) else value

        return hook

    handles = []
    for name in points:
        use_input = name == "merger"  # the merger's input: pre-merge features
        handles.append(ours.visual.get_submodule(name).register_forward_hook(record("ours", name, use_input)))
        handles.append(
            hf.model.visual.get_submodule(name).register_forward_hook(record("hf", name, use_input))
        )
    ours(prompt.input_ids, **prompt.ours())
    hf(**prompt.hf())
    for handle in handles:
        handle.remove()
    for name in points:
        theirs = hf_window_to_input_order(cfg, seen["hf"][name], prompt.image_grid_thw)
        assert max_err(seen["ours"][name], theirs) <= RTOL * scale_of(theirs), name


def with_temperature(attend, temperature: float):
    """Scores divided by a temperature: softmax(q k^T * scale / T) = the same attention at scale / T."""
    return lambda q, k, v, segments, scale: attend(q, k, v, segments, scale / temperature)


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_swap_one_blocks_attention_in_one_line(kernels):
    cfg = tiny_config("qwen2_5_vl", tied=True)
    model = QwenVL(cfg, kernels=kernels).eval()
    randomize_(model, seed=0)
    prompt = make_prompt(cfg, [[2, ("image", (1, 12, 20)), 2]], seed=1)
    keys = list(model.state_dict())
    outputs = {}

    def capture(i):
        return lambda m, a, o: outputs.__setitem__(i, o)

    handles = [model.visual.blocks[i].register_forward_hook(capture(i)) for i in range(cfg.vision.depth)]
    with torch.no_grad():
        plain_logits = model(prompt.input_ids, **prompt.ours()).logits
        plain = dict(outputs)
        block = model.visual.blocks[3].attn
        block.attend = with_temperature(block.attend, 2.0)  # the one line
        swapped_logits = model(prompt.input_ids, **prompt.ours()).logits
    for handle in handles:
        handle.remove()
    assert list(model.state_dict()) == keys  # no wrapper module, no renamed keys
    for i in range(3):  # blocks before 3 are untouched, bit for bit
        assert torch.equal(outputs[i], plain[i])
    assert (outputs[3] - plain[3]).abs().max() > 1e-3
    assert (swapped_logits - plain_logits).abs().max() > 1e-3
    assert model.visual.blocks[2].attn.attend is not block.attend  # only block 3 changed


def test_swapped_attention_is_the_same_on_both_paths():
    """The seam has one contract: the same user function on the torch path and on the kernel path."""
    cfg = tiny_config("qwen2_5_vl", tied=True)
    prompt = make_prompt(cfg, [[2, ("image", (1, 12, 20)), 2]], seed=1)
    logits = {}
    for kernels in ("torch", "triton"):
        model = QwenVL(cfg, kernels=kernels).eval()
        randomize_(model, seed=0)
        attn = model.visual.blocks[3].attn
        attn.attend = with_temperature(attn.attend, 0.5)
        with torch.no_grad():
            logits[kernels] = model(prompt.input_ids, **prompt.ours()).logits
    assert max_err(logits["triton"], logits["torch"]) <= RTOL * scale_of(logits["torch"])


def test_layer_12_read_layer_5_zeroed_and_pre_merge_in_one_forward():
    """Task: read layer-12 hidden states and the pre-merge features of an image in one forward while
    layer 5's output is replaced by zeros. Checked against running the layers by hand."""
    base = tiny_config("qwen2_vl", tied=True)
    cfg = dataclasses.replace(base, text=dataclasses.replace(base.text, num_layers=16))
    model = QwenVL(cfg).eval()
    randomize_(model, seed=2, std=0.05)
    prompt = make_prompt(cfg, [[3, ("image", (1, 8, 12)), 2]], seed=6)
    with torch.no_grad():
        with model.taps(
            read=["text.layers.12", "visual.merger.input", "text.layers.6.input"],
            replace={"text.layers.5": torch.zeros_like},
        ) as taps:
            out = model(prompt.input_ids, **prompt.ours())
        plain_pre_merge = {}
        hook = model.visual.merger.register_forward_pre_hook(
            lambda m, a: plain_pre_merge.setdefault("x", a[0])
        )
        plain = model(prompt.input_ids, **prompt.ours())
        hook.remove()
        # by hand: layers 6..12 on a zero residual stream, with the forward's own rotary tables
        x = torch.zeros_like(taps.cache["text.layers.12"])
        assert torch.equal(taps.cache["text.layers.6.input"], x)
        tables = mrope_table(out.positions, cfg.text, x.dtype)  # (cos, sin): positions only
        for layer in model.text.layers[6:13]:
            x = layer(x, tables, None, None)
    assert torch.equal(taps.cache["text.layers.12"], x)
    assert torch.equal(taps.cache["visual.merger.input"], plain_pre_merge["x"])  # vision is upstream
    assert (out.logits - plain.logits).abs().max() > 1e-3


def test_vision_inputs_are_checked_once_per_forward(monkeypatch):
    from qwenvl_min.model import qwenvl as model_module
    from qwenvl_min.model import vision

    calls = []
    original = vision.check_vision_inputs

    def counting(*args, **kwargs):
        calls.append(args[-1])
        return original(*args, **kwargs)

    monkeypatch.setattr(model_module, "check_vision_inputs", counting)
    monkeypatch.setattr(vision, "check_vision_inputs", counting)
    cfg = tiny_config("qwen2_5_vl", tied=True)
    prompt = prompt_for(cfg)
    with torch.no_grad():
        QwenVL(cfg).eval()(prompt.input_ids, **prompt.ours())
    assert calls == ["pixel_values", "pixel_values_videos"]  # once per kind, not again in the tower


@pytest.mark.parametrize(
    "family,kernels", [("qwen2_vl", "torch"), ("qwen2_5_vl", "torch"), ("qwen2_5_vl", "triton")]
)
def test_tower_compiles_without_graph_breaks(family, kernels):
    """With the layout computed up front the whole tower is one graph (no host sync, no Python loop over
    data; the Triton kernels are torch ops); inductor's output equals eager."""
    cfg = tiny_config(family, tied=True)
    model = QwenVL(cfg, kernels=kernels).eval()
    randomize_(model, seed=0)
    grid = torch.tensor([[1, 12, 20], [2, 8, 8]])
    pixels = torch.randn(int(grid.prod(dim=1).sum()), cfg.vision.patch_dim)
    layout = model.visual.layout(pixels, grid)
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model.visual)(pixels, grid, layout=layout)
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        eager = model.visual(pixels, grid, layout=layout)
        compiled = torch.compile(model.visual, fullgraph=True)(pixels, grid, layout=layout)
    assert max_err(compiled, eager) <= RTOL * scale_of(eager)


@pytest.mark.parametrize("family", FAMILIES)
def test_tower_compiles_as_users_call_it(family):
    """`torch.compile(model.visual)(pixel_values, grid_thw)` with no layout: the layout is computed outside
    the traced graph (at most one graph break, before the blocks: one graph holds every block and the
    merger), the output equals eager, and fullgraph=True fails with a message that says what to pass."""
    from torch._dynamo.testing import CompileCounter

    cfg = tiny_config(family, tied=True)
    model = QwenVL(cfg, kernels="torch").eval()
    randomize_(model, seed=0)
    grid = torch.tensor([[1, 12, 20], [2, 8, 8]])
    pixels = torch.randn(int(grid.prod(dim=1).sum()), cfg.vision.patch_dim)
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model.visual(pixels, grid)
        explained = torch._dynamo.explain(model.visual)(pixels, grid)
        assert explained.graph_break_count <= 1 and explained.graph_count == 1
        assert explained.op_count > 10 * cfg.vision.depth  # the blocks are in the graph, not skipped
        torch._dynamo.reset()
        counter = CompileCounter()
        compiled = torch.compile(model.visual, backend=counter)(pixels, grid)
        assert counter.frame_count == 1
        assert torch.equal(compiled, eager)
        torch._dynamo.reset()
        with pytest.raises(Exception, match=r"layout=model\.visual\.layout\(pixel_values, grid_thw\)"):
            torch.compile(model.visual, fullgraph=True, backend="eager")(pixels, grid)


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_compile_one_graph_per_block_kind(family):
    """The regional recipe in docs/benchmarks.md (`block.compile()` for every block of the tower): the
    layout is built outside the compiled regions, every block traces as one graph, all blocks of one kind
    share it (one graph for Qwen2-VL, window + full for Qwen2.5-VL), and the output equals eager."""
    from torch._dynamo.testing import CompileCounter

    cfg = tiny_config(family, tied=True)
    model = QwenVL(cfg, kernels="torch").eval()
    randomize_(model, seed=0)
    grid = torch.tensor([[1, 12, 20], [2, 8, 8]])
    pixels = torch.randn(int(grid.prod(dim=1).sum()), cfg.vision.patch_dim)
    torch._dynamo.reset()
    counter = CompileCounter()  # traces with dynamo, runs the captured graphs as they are
    with torch.no_grad():
        eager = model.visual(pixels, grid)
        for block in model.visual.blocks:
            block.compile(backend=counter, fullgraph=True)
        compiled = model.visual(pixels, grid)
    kinds = {cfg.vision.is_full_attention(i) for i in range(cfg.vision.depth)}
    assert cfg.vision.depth > len(kinds) and counter.frame_count == len(kinds)
    assert torch.equal(compiled, eager)


def test_attention_modules_default_to_the_model_choice():
    model = QwenVL(Config.preset("tiny-qwen2.5-vl"), kernels="torch")
    attends = {m.attend for m in model.modules() if isinstance(m, VisionAttention)}
    assert attends == {segment_attention_torch}
