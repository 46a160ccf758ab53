"""Compiled generation: a prefill compiled once for every prompt length and a decode step compiled once
for every step, both writing a preallocated `KVCache` at slots (see `qwenvl_min.model.cache`).

What is compiled: the decoder and the lm_head (`model.text` + `model.lm_head`), in two functions:
  * prefill: embeds (B, T, E) -> last-position logits (B, V), T and the capacity C marked dynamic, so one
    graph serves every prompt length and capacity (Qwen3-VL: with the DeepStack features of the prompt's
    vision tokens, their count dynamic too; a prompt without vision tokens is a second graph);
  * decode step: tokens (B, 1) -> logits (B, V), embedding lookup included; every step passes the same
    shapes and buffers, so it compiles once and (mode "reduce-overhead" on CUDA) replays one CUDA graph.
    C is dynamic here too (the buffers were marked in the prefill): a new capacity reuses the graph.
What stays eager: `QwenVL.prepare` (input checks, the vision tower, 3-D positions: all read device values
back), sampling, the stop logic. The vision tower can be compiled on its own (`torch.compile(model.visual)`).

When it recompiles: a new batch size (static: the second distinct one makes dynamo mark it dynamic, one
more compile, later sizes reuse that graph), a new dtype or device, another model whose parameters have
other shapes, a one-token prompt (T = 1 is specialized by dynamo). Prompt length, capacity and the step
never recompile.

Modes: compile=True is "reduce-overhead" (CUDA graphs) on CUDA and inductor's "default" on CPU; a string
is a torch.compile mode, or "eager" / "aot_eager": dynamo's debug backends (the same graphs, guards and
recompiles without inductor's code generation, which costs ~1 min per graph on a 2-core CPU). The prefill never uses CUDA graphs (a graph per prompt length would be recorded):
"reduce-overhead" prefills with "default", "max-autotune" with "max-autotune-no-cudagraphs".

Per model, the compiled functions and the most recent preallocated caches live in `_STATE` (weakly keyed by
the model, so they go with it). A cache is reset (zeroed) at the start of every generate call that uses
it, so no value of one call reaches another; another batch size or capacity bucket is another cache.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..model.cache import KVCache, SlotWrite
from ..model.deepstack import DeepStackFeatures
from ..model.qwenvl import QwenVL
from ..utils.hooks import foreign_hooks

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# dynamo without inductor, for debugging and for tests: same graphs, guards and recompiles, no C++ build
DEBUG_BACKENDS = ("eager", "aot_eager")
_WITHOUT_GRAPHS = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}
CAPACITY_STEP = 64  # capacities are rounded up to a multiple: nearby requests share one preallocated cache
CACHES_KEPT = 2  # preallocated caches kept per model (the most recently used)


def resolve_mode(compile: bool | str, device: torch.device) -> str | None:
    """The torch.compile mode for a `compile=` argument, or None for eager."""
    if compile is False:
        return None
    if compile is True:
        return "reduce-overhead" if device.type == "cuda" else "default"
    if isinstance(compile, str) and compile in COMPILE_MODES + DEBUG_BACKENDS:
        return compile
    raise ValueError(
        f"compile must be True, False, a torch.compile mode {COMPILE_MODES} or a debug backend "
        f"{DEBUG_BACKENDS}, got {compile!r}"
    )


def check_compilable(model: QwenVL) -> None:
    """Refuse to compile a model with forward hooks of anyone but the library's own tensor-parallel plan
    (taps, the user's): their Python side effects (recording, replacing, swapping attention for maps)
    would be traced once and not behave as written."""
    for name, module in model.named_modules():
        if foreign_hooks(module):
            raise ValueError(
                f"compile cannot run with taps or forward hooks active (module {name or 'model'!r}); "
                "generate with compile=False inside a taps block, or remove the hooks"
            )


def _prefill_logits(
    model: QwenVL,
    embeds: Tensor,
    positions: Tensor,
    key_valid: Tensor,
    cache: SlotWrite,
    deepstack: DeepStackFeatures | None,
) -> Tensor:
    """embeds (B, T, E), positions (3, B, T), key_valid (B, C) -> logits (B, V) of the last position."""
    hidden = model.text(embeds, positions, key_valid, cache, deepstack)  # (B, T, E)
    # a fresh (B, E) copy: the last position's view has the dynamic prompt length in its strides (also when
    # B = 1, where .contiguous() keeps the view), which a tensor-parallel lm_head's DTensor dispatch cannot
    # hash under compile; one row per batch item costs nothing to copy
    return model.lm_head(hidden[:, -1].clone(memory_format=torch.contiguous_format))


def _step_logits(
    model: QwenVL, tokens: Tensor, positions: Tensor, key_valid: Tensor, cache: SlotWrite
) -> Tensor:
    """tokens (B, 1), positions (3, B, 1), key_valid (B, C) -> logits (B, V)."""
    hidden = model.text(model.text.embed_tokens(tokens), positions, key_valid, cache)  # (B, 1, E)
    return model.lm_head(hidden[:, -1])


@dataclass
class CompiledText:
    """The compiled prefill and step of one model in one mode, and its preallocated caches."""

    mode: str
    prefill_fn: Callable[..., Tensor]
    step_fn: Callable[..., Tensor]
    caches: OrderedDict[tuple[object, ...], KVCache] = field(default_factory=OrderedDict)

    def cache_for(self, model: QwenVL, batch: int, tokens: int, like: Tensor) -> KVCache:
        """A reset preallocated cache holding at least `tokens` slots for `batch` rows (reused when one fits)."""
        cfg = model.config.text
        capacity = -(-tokens // CAPACITY_STEP) * CAPACITY_STEP
        key = (batch, capacity, like.dtype, like.device)
        cache = self.caches.pop(key, None)
        if cache is None:
            kv_heads = model.text.layers[0].attn.cached_kv_heads()  # this rank's, under tensor parallelism
            cache = KVCache.preallocated(
                cfg.num_layers, batch, capacity, kv_heads, cfg.head_dim, like.dtype, like.device
            )
            while len(self.caches) >= CACHES_KEPT:
                self.caches.popitem(last=False)
        else:
            cache.reset()
        self.caches[key] = cache
        return cache

    def prefill(
        self,
        model: QwenVL,
        embeds: Tensor,
        positions: Tensor,
        cache: KVCache,
        deepstack: DeepStackFeatures | None = None,
    ) -> Tensor:
        """Write the prompt to slots 0..T-1; key_valid must already hold the prompt's attention mask.
        `deepstack`: the prompt's DeepStack features (Qwen3-VL with vision inputs, `QwenVL.prepare`)."""
        t = embeds.shape[1]
        slots = torch.arange(t, device=embeds.device)
        if t > 1:  # dynamo specializes sizes 0 and 1; longer prompts share one graph
            for tensor, dim in ((embeds, 1), (positions, 2), (slots, 0)):
                torch._dynamo.mark_dynamic(tensor, dim)
        if deepstack is not None and deepstack.slots.shape[0] > 1:  # the vision token count varies too
            for tensor in (deepstack.slots, *deepstack.levels):
                torch._dynamo.mark_dynamic(tensor, 0)
        for buffer in (*cache.keys, *cache.values, cache.key_valid):
            torch._dynamo.mark_dynamic(buffer, 1)
        return self.prefill_fn(model, embeds, positions, cache.key_valid, cache.at(slots), deepstack).clone()

    def step(self, model: QwenVL, tokens: Tensor, positions: Tensor, slot: Tensor, cache: KVCache) -> Tensor:
        """One decode step: tokens (B,), positions (3, B, 1), slot (1,) -> logits (B, V)."""
        if self.mode in ("reduce-overhead", "max-autotune"):
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
        # positions come as a view whose strides depend on the request's length: fixed strides, no guard
        positions = positions.contiguous()
        logits = self.step_fn(model, tokens[:, None], positions, cache.key_valid, cache.at(slot))
        # CUDA graphs overwrite their output at the next replay: the caller gets its own copy
        return logits.clone() if self.mode in ("reduce-overhead", "max-autotune") else logits


_STATE: weakref.WeakKeyDictionary[nn.Module, dict[str, CompiledText]] = weakref.WeakKeyDictionary()


def compiled_text(model: QwenVL, mode: str) -> CompiledText:
    """The compiled functions of `model` in `mode`, made on first use."""
    per_model = _STATE.setdefault(model, {})
    if mode not in per_model:
        if mode in DEBUG_BACKENDS:
            prefill = torch.compile(_prefill_logits, backend=mode, fullgraph=True)
            step = torch.compile(_step_logits, backend=mode, fullgraph=True)
        else:
            prefill = torch.compile(_prefill_logits, mode=_WITHOUT_GRAPHS.get(mode, mode), fullgraph=True)
            if mode == "default" and model.text.embed_tokens.weight.device.type == "cpu":
                # A decode step's fused elementwise kernels touch a few thousand values: split over
                # threads, each costs an OpenMP barrier, and on a busy machine a barrier waits for a
                # descheduled thread (measured 40 ms for a 1536-wide RMSNorm on a loaded 2-core CPU).
                # One thread for inductor's own kernels; the matmuls still use torch's threads.
                step = torch.compile(_step_logits, fullgraph=True, options={"cpp.threads": 1})
            else:
                step = torch.compile(_step_logits, mode=mode, fullgraph=True)
        per_model[mode] = CompiledText(mode, prefill, step)
    return per_model[mode]
