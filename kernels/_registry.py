"""The one list of kernel variants: the launchers, the ahead-of-time compile check (`_aot.py`), the
benchmarks and the tests all read it, so none of them keeps its own list or count.

A *stage* is one kernel slot of a public op (the rotary op has one; window attention has a forward and
two backward kernels). Each stage fixes the arguments its launch builder takes and the representative
shapes the AOT check compiles. A *variant* is one @triton.jit kernel for a stage plus the builder that
turns the stage's arguments into a `Launch` (usually the stage's standard builder: then the variant's
kernel has the standard kernel's parameters). The first variant listed for a stage is its default:
what the public op runs. Adding a variant = writing its kernel + one `Variant(...)` line in VARIANTS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import _rotary_triton as rotary
from . import _window_attention_triton as attention
from ._launch import Launch


@dataclass(frozen=True)
class Stage:
    name: str
    op: str  # the public op it serves (also the `_aot` command-line name)
    aot_cases: Callable[[], list[tuple[str, tuple]]]  # (label, builder arguments after the kernel)


@dataclass(frozen=True)
class Variant:
    stage: str
    name: str  # unique over all stages; benchmarks name their rows "triton:<name>"
    kernel: Any  # a @triton.jit function
    build: Callable[..., Launch]  # build(kernel, *stage arguments) -> Launch

    def launch(self, *args: Any) -> Launch:
        return self.build(self.kernel, *args)


STAGES = (
    Stage("rotary", "rotary", rotary.aot_cases),
    Stage("attention_fwd", "window_attention", attention.fwd_aot_cases),
    Stage("attention_bwd_dkdv", "window_attention", attention.bwd_dkdv_aot_cases),
    Stage("attention_bwd_dq", "window_attention", attention.bwd_dq_aot_cases),
)

VARIANTS: list[Variant] = [
    Variant("rotary", "rotary", rotary.rotary_kernel, rotary.rotary_launch),
    Variant("attention_fwd", "attention_fwd", attention.fwd_kernel, attention.fwd_launch),
    Variant("attention_bwd_dkdv", "attention_bwd_dkdv", attention.bwd_dkdv_kernel, attention.bwd_dkdv_launch),
    Variant("attention_bwd_dq", "attention_bwd_dq", attention.bwd_dq_kernel, attention.bwd_dq_launch),
]


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"no kernel stage {name!r}; stages: {[s.name for s in STAGES]}")


def ops() -> list[str]:
    """Public ops that own at least one stage, in STAGES order."""
    return list(dict.fromkeys(s.op for s in STAGES))


def variants(stage_name: str) -> list[Variant]:
    stage(stage_name)  # unknown stage: a clear error rather than an empty list
    return [v for v in VARIANTS if v.stage == stage_name]


def variant(stage_name: str, name: str | None = None) -> Variant:
    """The variant `name` of a stage, or the stage's default (its first listed variant)."""
    found = variants(stage_name)
    if not found:
        raise LookupError(f"kernel stage {stage_name!r} has no variant; add one to VARIANTS in {__name__}")
    if name is None:
        return found[0]
    for v in found:
        if v.name == name:
            return v
    raise KeyError(f"stage {stage_name!r} has no variant {name!r}; variants: {[v.name for v in found]}")


def aot_launches(op: str) -> list[tuple[str, Launch]]:
    """(label, launch) for every variant of every stage of `op`, on each of its stage's AOT cases."""
    if op not in ops():
        raise KeyError(f"no kernel op {op!r}; ops: {ops()}")
    out = []
    for s in STAGES:
        if s.op == op:
            for v in variants(s.name):
                out += [(f"{v.name} {label}", v.launch(*args)) for label, args in s.aot_cases()]
    return out


@contextlib.contextmanager
def registered(extra: Variant) -> Iterator[Variant]:
    """Add a variant for the duration of a `with` block (tests of the registry itself)."""
    stage(extra.stage)
    if any(v.name == extra.name for v in VARIANTS):
        raise ValueError(f"a kernel variant named {extra.name!r} is already registered")
    VARIANTS.append(extra)
    try:
        yield extra
    finally:
        VARIANTS.remove(extra)
