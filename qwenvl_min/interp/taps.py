"""Taps: read and replace internal tensors of a forward by name, through the module tree's own hooks.

A tap name is a module path (its output), `<module path>.input` (its first input) or `<attention
path>.probs` (its attention probabilities, fp32); the table of useful names, their shapes and their row
order is in docs/design.md ("Taps"), and `tap_names(model)` lists every name.

    with model.taps(read=["text.layers.12", "visual.merger.input"],
                    replace={"text.layers.5": torch.zeros_like}) as taps:
        out = model(**inputs)
    taps.cache["text.layers.12"]

A replacement is a tensor of the same shape or a function `f(tensor) -> tensor`; it flows into the rest of
the forward, and a read of the same name records what flows on. Reading or replacing `.probs` swaps that
module's `attend` for the exact materializing attention (`qwenvl_min.model.attention`) for its own calls
(a pre-hook swaps it in, a hook puts the default back), so maps are computed only for the modules asked
for; outside a `with` block no hook is registered and the forward pays nothing.

Each forward inside the block overwrites what the previous one recorded (`keep="last"`, the default).
`keep="all"` keeps every call: `taps.calls[i]` is what the i-th forward of the whole model recorded
(`taps.cache` is the latest of them), which is how internals are read during generation (call 0 the
prefill, call k the decode step whose logits picked new token k). With `keep="all"` only forwards of the
model itself count as calls: a value reaching a tap while a submodule is called on its own
(`model.visual(...)`) is refused, since it belongs to no call.

A tensor-parallel model (`qwenvl_min.parallel.parallelize`) takes the same arguments and gives the same
single-process tensors: taps find its mesh from the DTensor parameters and gather (or slice) the tap
points whose local values are shards (`qwenvl_min.parallel.taps`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..model.attention import (
    SegmentMaps,
    causal_attention_from_maps,
    causal_attention_maps,
    segment_attention_from_maps,
    segment_attention_maps,
)
from ..model.config import Config
from ..model.qwenvl import QwenVL
from ..model.segments import Segments
from ..model.text import TextAttention
from ..model.vision import VisionAttention
from ..parallel.taps import TapSharding, tap_sharding

Replacement = Tensor | SegmentMaps | Callable[[Any], Any]
INPUT, PROBS = ".input", ".probs"
KEEP = ("last", "all")


class TapError(ValueError):
    """A tap name or replacement that does not fit the model."""


def _tapped_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module that does work, by path (containers such as ModuleList are not called)."""
    return {name: m for name, m in model.named_modules() if name and not isinstance(m, nn.ModuleList)}


def tap_names(model: nn.Module | Config) -> list[str]:
    """Every tap name of `model` (or of the model a config describes), module by module."""
    if isinstance(model, Config):
        with torch.device("meta"):
            model = QwenVL(model, kernels="torch")
    names = []
    for name, module in _tapped_modules(model).items():
        names += [name, name + INPUT]
        if isinstance(module, (VisionAttention, TextAttention)):
            names.append(name + PROBS)
    return names


class Taps:
    """What the forwards inside one `with` block read and replace; `cache` holds what was read."""

    def __init__(
        self,
        model: nn.Module,
        read: Iterable[str] = (),
        replace: Mapping[str, Replacement] | None = None,
        keep: str = "last",
    ) -> None:
        if keep not in KEEP:
            raise TapError(
                f"keep must be one of {KEEP} (the last forward's values, or every call's), got {keep!r}"
            )
        self.model = model
        self.keep = keep
        self.read = set(read)
        self.replace = dict(replace or {})
        valid = set(tap_names(model))
        for name in sorted((self.read | set(self.replace)) - valid):
            raise TapError(
                f"unknown tap name {name!r} (names are module paths such as 'visual.blocks.3' or "
                "'text.layers.0.attn.probs'; model.tap_names() lists all of them)"
            )
        self.cache: dict[str, Any] = {}
        self.calls: list[dict[str, Any]] = []  # keep="all": one record per forward of the model
        self._in_call = False
        self._handles: list[Any] = []
        self._sharding: TapSharding | None = None

    def __enter__(self) -> Taps:
        if self._handles:
            raise TapError("this Taps is already active; create a new one with model.taps(...)")
        self._sharding = tap_sharding(self.model)
        modules = _tapped_modules(self.model)
        if self.keep == "all":
            self._handles.append(self.model.register_forward_pre_hook(self._begin_call))
            self._handles.append(self.model.register_forward_hook(self._end_call, always_call=True))
        for name in sorted(self.read | set(self.replace)):
            if name.endswith(PROBS) and name.removesuffix(PROBS) in modules:
                self._swap_attention(name, modules[name.removesuffix(PROBS)])
            elif name.endswith(INPUT) and name.removesuffix(INPUT) in modules:
                hook = self._input_hook(name)
                self._handles.append(modules[name.removesuffix(INPUT)].register_forward_pre_hook(hook))
            else:
                self._handles.append(modules[name].register_forward_hook(self._output_hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _begin_call(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.cache = {}
        self.calls.append(self.cache)
        self._in_call = True

    def _end_call(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._in_call = False

    # ---- the one place where a value is recorded and/or replaced ----------------------------------------
    def flow(self, name: str, value: Any) -> Any:
        """Record and/or replace the value passing tap `name`; returns what flows on."""
        if self._sharding is not None:  # gather a shard into the single-process value (and back)
            return self._sharding.flow(name, value, self._flow)
        return self._flow(name, value)

    def _flow(self, name: str, value: Any) -> Any:
        if name in self.replace:
            value = apply_replacement(name, value, self.replace[name])
        if name in self.read:
            if self.keep == "all" and not self._in_call:
                raise TapError(
                    f"tap {name!r} fired outside a forward of the whole model; keep='all' records per "
                    "model call: call the model itself, or use keep='last' to tap a submodule called alone"
                )
            self.cache[name] = value
        return value

    def _output_hook(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            return self.flow(name, output)

        return hook

    def _input_hook(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (self.flow(name, args[0]), *args[1:])

        return hook

    def _swap_attention(self, name: str, module: nn.Module) -> None:
        """For this module's own calls, `attend` becomes the exact materializing attention that passes its
        probabilities through tap `name`; after each call the module's own `attend` is back."""
        if isinstance(module, VisionAttention):

            def tapped(q: Tensor, k: Tensor, v: Tensor, segments: Segments, scale: float) -> Tensor:
                maps = self.flow(name, segment_attention_maps(q, k, segments, scale))
                return segment_attention_from_maps(v, segments, maps)

        else:

            def tapped(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
                return causal_attention_from_maps(
                    v, self.flow(name, causal_attention_maps(q, k, mask, scale))
                )

        own: list[Callable[..., Tensor]] = []

        def swap_in(module: nn.Module, args: tuple[Any, ...]) -> None:
            own.append(module.attend)
            module.attend = tapped

        def swap_back(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if own:
                module.attend = own.pop()

        self._handles.append(module.register_forward_pre_hook(swap_in))
        self._handles.append(module.register_forward_hook(swap_back, always_call=True))


def apply_replacement(name: str, value: Any, replacement: Replacement) -> Any:
    """What flows on at tap `name` when `replacement` (a value, or a function of the value) is given:
    checked to have the shape (and kind) of `value`, cast to its dtype and device."""
    new = replacement(value) if callable(replacement) else replacement
    if isinstance(value, Tensor):
        if not isinstance(new, Tensor) or new.shape != value.shape:
            got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
            raise TapError(
                f"replacement for tap {name!r} must be a tensor of shape {tuple(value.shape)}, got {got}"
            )
        return new.to(dtype=value.dtype, device=value.device)
    if isinstance(value, SegmentMaps):
        if not isinstance(new, SegmentMaps) or [p.shape for p in new.probs] != [p.shape for p in value.probs]:
            raise TapError(f"replacement for tap {name!r} must be a SegmentMaps with the same group shapes")
    return new
