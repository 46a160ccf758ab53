"""Non-causal attention over segments (the vision tower's attention): the torch path.

Segments of equal length are batched into one SDPA call each (`Segments.groups`), so there is no
per-window Python loop and no dense N x N mask. `qwenvl_min.dispatch.segment_attention` chooses between
this and the Triton kernel.

`segment_attention_probs` is the exact path used when a tap asks for attention maps: it materializes
softmax(q k^T * scale) in fp32 per length group and returns the maps with the output.

Shape legend: N packed tokens, H heads, D head_dim, S_g segments of one length L.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .segments import LengthGroup, Segments


def _gather_group(x: Tensor, group: LengthGroup) -> Tensor:
    """(N, H, D) -> (S_g, H, L, D) for one length group (a view when the group is one contiguous run)."""
    n_seg, length = group.starts.numel(), group.length
    if group.contiguous:
        start = int(group.starts[0])
        x = x[start : start + n_seg * length].view(n_seg, length, *x.shape[1:])
    else:
        x = x[group.token_positions()]  # (S_g, L, H, D)
    return x.transpose(1, 2)


def _scatter_group(out: Tensor, values: Tensor, group: LengthGroup) -> None:
    """Write (S_g, H, L, D) results of one group back into the packed (N, H, D) output."""
    values = values.transpose(1, 2)  # (S_g, L, H, D)
    if group.contiguous:
        start = int(group.starts[0])
        out[start : start + values.shape[0] * group.length] = values.reshape(-1, *values.shape[2:])
    else:
        out[group.token_positions().reshape(-1)] = values.reshape(-1, *values.shape[2:])


def segment_attention_torch(q: Tensor, k: Tensor, v: Tensor, segments: Segments, scale: float) -> Tensor:
    """softmax(q k^T * scale) v within each segment; q, k, v (N, H, D) -> (N, H, D)."""
    if (
        len(segments.groups) == 1
        and segments.groups[0].contiguous
        and segments.groups[0].length == q.shape[0]
    ):
        # one segment covering everything (a single image in a full-attention block): no gather. SDPA gets
        # a batch dim on purpose: with 3-D inputs the CPU dispatcher takes the math path, which
        # materializes the (H, N, N) scores (1 GB at N = 4096) instead of running the flash kernel.
        q4, k4, v4 = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # (1, H, N, D)
        return F.scaled_dot_product_attention(q4, k4, v4, scale=scale)[0].transpose(0, 1)
    out = q.new_empty(q.shape)
    for group in segments.groups:
        values = F.scaled_dot_product_attention(
            _gather_group(q, group), _gather_group(k, group), _gather_group(v, group), scale=scale
        )  # (S_g, H, L, D)
        _scatter_group(out, values, group)
    return out


def segment_attention_probs(
    q: Tensor, k: Tensor, v: Tensor, segments: Segments, scale: float
) -> tuple[Tensor, list[Tensor]]:
    """Exact attention that also returns the maps: output (N, H, D) and, per length group, the fp32
    probabilities (S_g, H, L, L) in the order of `segments.groups`."""
    out = q.new_empty(q.shape)
    maps = []
    for group in segments.groups:
        qg, kg, vg = (_gather_group(x, group) for x in (q, k, v))
        scores = torch.matmul(qg.float(), kg.float().transpose(-1, -2)) * scale  # (S_g, H, L, L)
        probs = scores.softmax(dim=-1)
        _scatter_group(out, torch.matmul(probs.to(vg.dtype), vg), group)
        maps.append(probs)
    return out, maps


def attention_from_probs(v: Tensor, segments: Segments, maps: list[Tensor]) -> Tensor:
    """Output (N, H, D) of segment attention given (possibly replaced) per-group probability maps."""
    out = v.new_empty(v.shape)
    for group, probs in zip(segments.groups, maps):
        _scatter_group(out, torch.matmul(probs.to(v.dtype), _gather_group(v, group)), group)
    return out
