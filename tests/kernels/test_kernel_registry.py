"""The registry of kernel variants (`qwenvl_min.kernels._registry`): what it lists, that a new variant
is one kernel plus one entry (the launcher, the AOT list and the variant runner all pick it up), and the
AOT signature table."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from qwenvl_min.kernels import _registry, _rotary_triton
from qwenvl_min.kernels._launch import POINTER_TYPES, Launch, is_interpreted, signature
from qwenvl_min.kernels._rotary import rotate_into

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter (tests/conftest.py)


def test_every_stage_has_a_default_and_names_are_unique():
    names = [v.name for v in _registry.VARIANTS]
    assert len(names) == len(set(names))
    for stage in _registry.STAGES:
        assert _registry.variant(stage.name) is _registry.variants(stage.name)[0]
        assert stage.aot_cases(), stage.name  # every stage is compiled on at least one shape
    assert _registry.ops() == ["rotary", "window_attention"]


def test_aot_list_is_every_variant_on_every_case_of_its_stage():
    for op in _registry.ops():
        stages = [s for s in _registry.STAGES if s.op == op]
        expected = sum(len(_registry.variants(s.name)) * len(s.aot_cases()) for s in stages)
        launches = _registry.aot_launches(op)
        assert len(launches) == expected > 0
        assert len({label for label, _ in launches}) == len(launches)  # labels tell launches apart


def test_unknown_names_fail_clearly():
    with pytest.raises(KeyError, match="no kernel stage 'rotory'"):
        _registry.variants("rotory")
    with pytest.raises(KeyError, match="stage 'rotary' has no variant 'fast'; variants: \\['rotary'\\]"):
        _registry.variant("rotary", "fast")
    with pytest.raises(KeyError, match="no kernel op 'rope'"):
        _registry.aot_launches("rope")


@triton.jit
def _k_first_rotary_kernel(
    Q, K, QO, KO, COS, SIN, q_blocks, n_tokens, T, HQ, HK,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sqo_b, sqo_t, sqo_h, sko_b, sko_t, sko_h, sc_b, sc_t, ss_b, ss_t,
    R: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_R: tl.constexpr,
    COMPUTE: tl.constexpr, CONJUGATE: tl.constexpr,
):  # fmt: skip
    """A variant with rotary_kernel's parameters: the first programs take k's rows, the rest q's. Built
    from the same `_rotary_rows` block, so it inherits the numerics."""
    pid = tl.program_id(0)
    k_blocks = tl.num_programs(0) - q_blocks
    if pid < k_blocks:
        _rotary_triton._rotary_rows(K, KO, COS, SIN, pid, n_tokens * HK, T, HK, sk_b, sk_t, sk_h, sko_b,
                                    sko_t, sko_h, sc_b, sc_t, ss_b, ss_t, R, BLOCK_ROWS, BLOCK_R, COMPUTE,
                                    CONJUGATE)  # fmt: skip
    else:
        _rotary_triton._rotary_rows(Q, QO, COS, SIN, pid - k_blocks, n_tokens * HQ, T, HQ, sq_b, sq_t,
                                    sq_h, sqo_b, sqo_t, sqo_h, sc_b, sc_t, ss_b, ss_t, R, BLOCK_ROWS,
                                    BLOCK_R, COMPUTE, CONJUGATE)  # fmt: skip


def test_a_new_variant_is_one_kernel_and_one_entry():
    entry = _registry.Variant(
        "rotary", "rotary_k_first", _k_first_rotary_kernel, _rotary_triton.rotary_launch
    )
    before = len(_registry.aot_launches("rotary"))
    q = torch.randn(7, 3, 80, device=DEVICE).half()
    k = torch.randn(7, 2, 80, device=DEVICE).half()
    angles = torch.rand(7, 40, device=DEVICE) * 30
    cos, sin = angles.cos().half(), angles.sin().half()
    with _registry.registered(entry):
        assert _registry.variants("rotary")[-1] is entry
        assert _registry.variant("rotary").name == "rotary"  # the default is still the first listed
        after = _registry.aot_launches("rotary")
        assert len(after) == before + len(_registry.stage("rotary").aot_cases())
        assert sum(launch.kernel is _k_first_rotary_kernel for _, launch in after) == len(after) - before
        outputs = {}
        for name in ("rotary", "rotary_k_first"):
            q_out, k_out = torch.empty_like(q), torch.empty_like(k)
            rotate_into(q, k, cos, sin, q_out, k_out, False, variant=name)
            outputs[name] = (q_out, k_out)
        with pytest.raises(ValueError, match="already registered"):
            with _registry.registered(entry):
                pass
    assert entry not in _registry.VARIANTS
    for ours, default in zip(outputs["rotary_k_first"], outputs["rotary"]):
        torch.testing.assert_close(ours, default, rtol=0, atol=0)


@triton.jit
def _gather_kernel(X, IDX, OUT, n, BLOCK: tl.constexpr):  # only its signature is used
    i = tl.arange(0, BLOCK)
    tl.store(OUT + i, tl.load(X + tl.load(IDX + i, mask=i < n), mask=i < n), mask=i < n)


def test_signature_covers_int64_pointers_and_names_unknown_dtypes():
    # an interpreted kernel does not know its constexprs: compile-mode stand-in, as `_aot` sees it
    kernel = triton.JITFunction(_gather_kernel.fn) if is_interpreted(_gather_kernel) else _gather_kernel
    args = dict(X=torch.empty(4), IDX=torch.zeros(4, dtype=torch.int64), OUT=torch.empty(4), n=4, BLOCK=16)
    types, constants = signature(Launch(kernel, (1,), args))
    assert types == {"X": "*fp32", "IDX": "*i64", "OUT": "*fp32", "n": "i32", "BLOCK": "constexpr"}
    assert constants == {"BLOCK": 16}
    assert POINTER_TYPES[torch.int64] == "*i64"
    bad = dict(args, IDX=torch.zeros(4, dtype=torch.complex64))
    with pytest.raises(TypeError, match="IDX of _gather_kernel is a torch.complex64 tensor, which has no"):
        signature(Launch(kernel, (1,), bad))
