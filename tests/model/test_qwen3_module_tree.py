"""Qwen3-VL's module tree is the interface too: hooks fire on every module (DeepStack injections, the MoE
router and experts included), the tower compiles into one graph, the Triton kernels (full-frame varlen
attention, rotary) give the torch path's logits, and DeepStack and router logits are taps that can be
read and replaced like any other."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from hf_models import make_prompt, max_err, randomize_, scale_of
from torch import nn

from qwenvl_min import Config, QwenVL

PRESETS = ["tiny-qwen3-vl", "tiny-qwen3-vl-moe"]
RTOL = 1e-5  # fp32 parity rule of the project: max error <= 1e-5 of the output scale


def model_and_prompt(preset: str, kernels: str = "torch"):
    cfg = Config.preset(preset)
    model = QwenVL(cfg, kernels=kernels).eval()
    randomize_(model, seed=0)
    rows = [
        [("pad", 3), 2, ("image", (1, 6, 10)), 1, ("video", (2, 4, 8)), 2],
        [1, ("video", (1, 4, 4)), 2, ("image", (1, 8, 8)), 2, ("image", (1, 4, 4)), 13],
    ]
    return model, make_prompt(cfg, rows, seed=1)


@pytest.mark.parametrize("preset", PRESETS)
def test_forward_hooks_fire_on_every_module_that_does_work(preset):
    model, prompt = model_and_prompt(preset)
    fired: list[str] = []
    handles = [
        module.register_forward_hook(lambda m, a, o, name=name: fired.append(name))
        for name, module in model.named_modules()
    ]
    with torch.no_grad():
        model(prompt.input_ids, **prompt.ours())
    for handle in handles:
        handle.remove()
    containers = {name for name, m in model.named_modules() if isinstance(m, nn.ModuleList)}
    assert set(fired) == {name for name, _ in model.named_modules()} - containers
    assert fired.count("visual") == 1 and fired[-1] == ""
    assert {"visual.pos_embed", "visual.deepstack_mergers.1", "text.layers.1.deepstack"} <= set(fired)


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_tower_compiles_without_graph_breaks(kernels):
    """With the layout computed up front the tower (learned positions, blocks, DeepStack mergers) is one
    graph; the compiled merged and DeepStack features equal eager."""
    model, prompt = model_and_prompt("tiny-qwen3-vl", kernels)
    pixels, grid = prompt.pixel_values, prompt.image_grid_thw
    layout = model.visual.layout(pixels, grid)
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model.visual)(pixels, grid, layout=layout)
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        eager = model.visual(pixels, grid, layout=layout)
        compiled = torch.compile(model.visual, fullgraph=True, backend="aot_eager")(
            pixels, grid, layout=layout
        )
    for a, b in zip((compiled.merged, *compiled.deepstack), (eager.merged, *eager.deepstack)):
        assert max_err(a, b) <= RTOL * scale_of(b)


def test_tower_compiles_as_users_call_it():
    """`torch.compile(model.visual)(pixel_values, grid_thw)`: the layout outside the graph, one graph."""
    model, prompt = model_and_prompt("tiny-qwen3-vl")
    pixels, grid = prompt.pixel_values_videos, prompt.video_grid_thw
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model.visual(pixels, grid)
        explained = torch._dynamo.explain(model.visual)(pixels, grid)
        assert explained.graph_break_count <= 1 and explained.graph_count == 1
        compiled = torch.compile(model.visual, backend="eager")(pixels, grid)
    assert torch.equal(compiled.merged, eager.merged)
    assert all(torch.equal(a, b) for a, b in zip(compiled.deepstack, eager.deepstack))


@pytest.mark.parametrize("preset", PRESETS)
def test_model_with_kernels_equals_torch_path(preset):
    """kernels="triton" (interpreted on CPU): per-frame segments through the varlen attention kernel,
    vision and text rotary through the rotary kernel (head dims 16 and 24)."""
    model, prompt = model_and_prompt(preset)
    valid = prompt.valid
    with torch.no_grad():
        reference = model(prompt.input_ids, **prompt.ours()).logits
        model.set_kernels("triton")
        kernels = model(prompt.input_ids, **prompt.ours()).logits
    scale = max(1.0, reference[valid].abs().max().item())
    assert (kernels[valid] - reference[valid]).abs().max().item() <= RTOL * scale


@torch.no_grad()
def test_deepstack_taps_read_and_replace():
    """A DeepStack level replaced by itself changes nothing (bit for bit); zeroed, the injection adds
    nothing (each layer's output equals its input to `deepstack`) and the logits change."""
    model, prompt = model_and_prompt("tiny-qwen3-vl")
    run = lambda: model(prompt.input_ids, **prompt.ours()).logits  # noqa: E731
    plain = run()
    with model.taps(replace={"visual.deepstack_mergers.1": lambda x: x.clone()}):
        assert torch.equal(run(), plain)
    levels = len(model.config.vision.deepstack_indexes)
    zeros = {f"visual.deepstack_mergers.{k}": torch.zeros_like for k in range(levels)}
    names = [f"text.layers.{i}{suffix}" for i in range(levels) for suffix in ("", ".deepstack.input")]
    with model.taps(read=names, replace=zeros) as taps:
        ablated = run()
    for i in range(levels):
        assert torch.equal(taps.cache[f"text.layers.{i}"], taps.cache[f"text.layers.{i}.deepstack.input"])
    assert max_err(ablated, plain) > 1e-2 * scale_of(plain)


@torch.no_grad()
def test_router_logits_are_a_tap_that_steers_the_experts():
    """`text.layers.{i}.mlp.router` is (B, T, experts); a replacement changes which experts run."""
    model, prompt = model_and_prompt("tiny-qwen3-vl-moe")
    run = lambda: model(prompt.input_ids, **prompt.ours()).logits  # noqa: E731
    with model.taps(read=["text.layers.2.mlp.router"]) as taps:
        plain = run()
    assert taps.cache["text.layers.2.mlp.router"].shape == (*prompt.input_ids.shape, 6)
    with model.taps(replace={"text.layers.2.mlp.router": lambda x: x.clone()}):
        assert torch.equal(run(), plain)

    def only_experts_0_and_1(logits):
        forced = torch.full_like(logits, -30.0)
        forced[..., :2] = 0.0
        return forced

    with model.taps(replace={"text.layers.2.mlp.router": only_experts_0_and_1}):
        steered = run()
    assert max_err(steered, plain) > 1e-2 * scale_of(plain)
