"""The kernels as torch ops: `torch.library.opcheck` on every op (schema, fake implementation, autograd
registration, AOT dispatch with dynamic shapes), and torch.compile tracing `apply_rotary` /
`window_attention` with no graph break, matching eager outputs and gradients. On CPU the kernels run
under the Triton interpreter; the ops are opaque to inductor, which therefore compiles on CPU too.
Shapes are tiny: every opcheck runs the interpreted kernel several times."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing

import qwenvl_min.kernels  # noqa: F401  (registers torch.ops.qwenvl_min.*)
from qwenvl_min.kernels import apply_rotary, window_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter (tests/conftest.py)
OPS = torch.ops.qwenvl_min


def _rotary_args(n: int = 6, requires_grad: bool = False):
    qkv = torch.randn(n, 3, 2, 16, device=DEVICE)  # q, k strided views of a fused projection
    angles = torch.rand(n, 8, device=DEVICE) * 20
    q, k = qkv[:, 0].clone(), qkv[:, 1, :1].clone()
    return q.requires_grad_(requires_grad), k.requires_grad_(requires_grad), angles.cos(), angles.sin()


def _attention_args(lengths=(3, 0, 5), requires_grad: bool = False):
    n = sum(lengths)
    q, k, v = (torch.randn(n, 2, 16, device=DEVICE, requires_grad=requires_grad) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    return q, k, v, cu, max(lengths)


@pytest.mark.parametrize("conjugate", [False, True])
def test_opcheck_rotary(conjugate):
    q, k, cos, sin = _rotary_args(requires_grad=True)
    torch.library.opcheck(OPS.rotary.default, (q, k, cos, sin, conjugate))


def test_opcheck_rotary_batched_layout():
    q = torch.randn(2, 3, 2, 16, device=DEVICE, requires_grad=True)
    k = torch.randn(2, 3, 1, 16, device=DEVICE, requires_grad=True)
    cos, sin = torch.randn(2, 3, 8, device=DEVICE), torch.randn(2, 3, 8, device=DEVICE)
    torch.library.opcheck(OPS.rotary.default, (q, k, cos, sin, False))


def test_opcheck_rotary_inplace():
    q, k, cos, sin = _rotary_args()
    torch.library.opcheck(OPS.rotary_.default, (q, k, cos, sin, False))


def test_opcheck_window_attention():
    q, k, v, cu, longest = _attention_args(requires_grad=True)
    torch.library.opcheck(OPS.window_attention.default, (q, k, v, cu, longest, 0.25))


def test_opcheck_window_attention_backward():
    q, k, v, cu, longest = _attention_args()
    out, lse = OPS.window_attention(q, k, v, cu, longest, 0.25)
    d_out = torch.randn_like(out)
    torch.library.opcheck(
        OPS.window_attention_backward.default, (d_out, q, k, v, out, lse, cu, longest, 0.25)
    )


def _attention_block(q, k, v, cos, sin, cu, max_seqlen):
    """What a vision attention block does with the two ops."""
    q, k = apply_rotary(q, k, cos, sin)
    return window_attention(q, k, v, cu, max_seqlen=max_seqlen, validate=False)


def _block_inputs(lengths=(3, 0, 5), requires_grad=False):
    q, k, v, cu, longest = _attention_args(lengths, requires_grad)
    angles = torch.rand(q.shape[0], 8, device=DEVICE) * 20
    return q, k, v, angles.cos(), angles.sin(), cu, longest


@pytest.mark.parametrize(
    "fn, make_args",
    [
        (lambda q, k, cos, sin: apply_rotary(q, k, cos, sin), lambda: _rotary_args()),
        (lambda q, k, cos, sin: apply_rotary(q, k, cos, sin, inplace=True), lambda: _rotary_args()),
        (lambda q, k, v, cu, m: window_attention(q, k, v, cu, m, validate=False), _attention_args),
        (_attention_block, _block_inputs),
    ],
    ids=["rotary", "rotary-inplace", "window_attention", "block"],
)
def test_no_graph_breaks(fn, make_args):
    explanation = torch._dynamo.explain(fn)(*make_args())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    # and the ops are in that graph (not run eagerly around it)
    targets = {str(node.target) for g in explanation.graphs for node in g.graph.nodes}
    assert any("qwenvl_min" in t for t in targets), targets


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_block_matches_eager_with_gradients(backend):
    torch._dynamo.reset()
    compiled = torch.compile(_attention_block, backend=backend, fullgraph=True)
    q, k, v, cos, sin, cu, longest = _block_inputs(requires_grad=True)
    grad = torch.randn_like(q)
    leaves = (q, k, v)
    out = compiled(q, k, v, cos, sin, cu, longest)
    grads = torch.autograd.grad(out, leaves, grad)
    out_ref = _attention_block(q, k, v, cos, sin, cu, longest)
    grads_ref = torch.autograd.grad(out_ref, leaves, grad)
    # the same kernels on the same inputs: bit equality
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=0)


def test_compiled_inplace_rotary_with_gradients():
    torch._dynamo.reset()

    def fn(q, k, cos, sin):
        return apply_rotary(q * 1, k * 1, cos, sin, inplace=True)  # non-leaf inputs, as autograd needs

    q, k, cos, sin = _rotary_args(requires_grad=True)
    out = torch.compile(fn, backend="aot_eager", fullgraph=True)(q, k, cos, sin)
    grads = torch.autograd.grad(out[0].sum() + 2 * out[1].sum(), (q, k))
    ref = fn(q, k, cos, sin)
    grads_ref = torch.autograd.grad(ref[0].sum() + 2 * ref[1].sum(), (q, k))
    for a, b in zip((*out, *grads), (*ref, *grads_ref)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_new_max_seqlen_recompiles_at_most_once():
    """max_seqlen is a plain int: dynamo specializes the first value, then makes it (and the token
    count) dynamic on the second; later images of other sizes reuse that graph. With dynamic=True the
    first graph is already general."""
    # segment lengths: a new N and max_seqlen each time (N never equals another size: no duck sizing)
    cases = [(3, 4), (6, 2, 4), (9, 9), (1, 10, 2)]
    for dynamic, expected_frames in ((None, 2), (True, 1)):
        torch._dynamo.reset()
        counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
        compiled = torch.compile(_attention_block, backend=counter, fullgraph=True, dynamic=dynamic)
        for lengths in cases:
            args = _block_inputs(lengths)
            torch.testing.assert_close(compiled(*args), _attention_block(*args), rtol=0, atol=0)
        assert counter.frame_count == expected_frames, (dynamic, counter.frame_count)


@pytest.mark.parametrize("fullgraph", [True, False])
@pytest.mark.parametrize("kwargs", [dict(validate=True), dict(max_seqlen=None, validate=False)])
def test_compiled_validation_is_refused(kwargs, fullgraph):
    """Validating cu_seqlens (or computing max_seqlen) syncs with the device: under compile that is an
    error naming the fix, not a silent graph break and a sync."""
    torch._dynamo.reset()
    q, k, v, cu, longest = _attention_args()
    call = {"max_seqlen": longest, **kwargs}
    fn = torch.compile(
        lambda q, k, v, cu: window_attention(q, k, v, cu, **call), backend="aot_eager", fullgraph=fullgraph
    )
    with pytest.raises(Exception, match="under torch.compile pass validate=False and max_seqlen"):
        fn(q, k, v, cu)


def test_fake_implementation_checks_arguments():
    """Bad shapes fail while tracing with the kernel's own message, not deep inside a fake kernel."""
    q, k, cos, sin = _rotary_args()
    mode = torch._subclasses.fake_tensor.FakeTensorMode()
    fq, fk, fcos, fsin = (mode.from_tensor(x) for x in (q, k, cos[:, :4].contiguous(), sin))
    with mode:
        with pytest.raises(ValueError, match="expected the half-width table"):
            OPS.rotary(fq, fk, fcos, fsin, False)
