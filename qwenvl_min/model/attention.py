"""Attention functions: what an attention module calls to turn q, k, v into its output.

Every attention module holds its function as the attribute `attend` (see `vision.VisionAttention` and
`text.TextAttention`), so one block's attention is changed by assigning another function to it; the
module's parameters and state-dict keys stay as they are. Two contracts:

vision  attend(q, k, v, segments, scale) -> out
        q, k, v, out (N, H, Dh) in the packed order of `segments` (`segments.Segments`): every segment
        is a contiguous run given by `segments.cu_seqlens` (the varlen convention), non-causal,
        softmax(q k^T * scale) v within each segment. The attention module gathers rows into packed
        order before and scatters back after; `segments.rows(positions)` names the pixel_values rows.
text    attend(q, k, v, mask, scale) -> out
        q (B, H, T, Dh), k and v (B, G, K, Dh) with H a multiple of G (query head i uses kv head
        i // (H / G)), out (B, H, T, Dh). `mask` is a boolean (B, 1, T, K) "query may see key", or None
        for plain causal attention with the T queries at the end of the K keys (T == K, or T == 1).

This file holds the torch implementations: the fast ones (SDPA) and the exact, materializing ones that
also return fp32 probabilities (used when a tap asks for attention maps).

Shapes (letters as in docs/design.md, "Shape legend"): N (packed rows), H, G, Dh, S_g, L, B, T (queries), K.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .segments import LengthGroup, Segments

VisionAttend = Callable[[Tensor, Tensor, Tensor, Segments, float], Tensor]
TextAttend = Callable[[Tensor, Tensor, Tensor, "Tensor | None", float], Tensor]


# ---- vision: segments ---------------------------------------------------------------------------------------
def _gather_group(x: Tensor, group: LengthGroup) -> Tensor:
    """(N, H, D) -> (S_g, H, L, D) for one length group (a view when its segments are back to back)."""
    if group.first is not None:
        x = x[group.first : group.first + group.count * group.length].view(
            group.count, group.length, *x.shape[1:]
        )
    else:
        x = x[group.index]  # (S_g, L, H, D)
    return x.transpose(1, 2)


def _scatter_group(out: Tensor, values: Tensor, group: LengthGroup) -> None:
    """Write (S_g, H, L, D) results of one group into their positions of the (N, H, D) output."""
    values = values.transpose(1, 2)  # (S_g, L, H, D)
    if group.first is not None:
        rows = out[group.first : group.first + group.count * group.length]
        rows.view(values.shape).copy_(values)
    else:
        out[group.index.reshape(-1)] = values.reshape(-1, *values.shape[2:])


def segment_attention_torch(q: Tensor, k: Tensor, v: Tensor, segments: Segments, scale: float) -> Tensor:
    """softmax(q k^T * scale) v within each segment; q, k, v (N, H, D) -> (N, H, D), packed order."""
    groups = segments.groups
    if len(groups) == 1 and groups[0].first == 0 and groups[0].count == 1:
        # one segment covering everything (a single image in a full-attention block): no gather. SDPA gets
        # a batch dim on purpose: with 3-D inputs the CPU dispatcher takes the math path, which
        # materializes the (H, N, N) scores (1 GB at N = 4096) instead of running the flash kernel.
        # Contiguous (1, H, N, D) copies: CPU flash attention reads them ~12% faster than the strided
        # views of the fused qkv (N = 3136, H = 16, D = 72 on 2 cores: 0.31 vs 0.35 s, copies included).
        q4, k4, v4 = (x.transpose(0, 1).unsqueeze(0).contiguous() for x in (q, k, v))  # (1, H, N, D)
        return F.scaled_dot_product_attention(q4, k4, v4, scale=scale)[0].transpose(0, 1)
    out = q.new_empty(q.shape)
    for group in groups:
        values = F.scaled_dot_product_attention(
            _gather_group(q, group), _gather_group(k, group), _gather_group(v, group), scale=scale
        )  # (S_g, H, L, D)
        _scatter_group(out, values, group)
    return out


@dataclass
class SegmentMaps:
    """Vision attention maps of one block, grouped like the attention itself (segments of equal length).

    probs[g]: (S_g, heads, L_g, L_g) fp32 softmax probabilities of the g-th group's segments (rows are
    queries); token_index[g]: (S_g, L_g) the pixel_values row of each query/key in those segments.
    """

    probs: list[Tensor]
    token_index: list[Tensor]

    def dense(self, num_tokens: int) -> Tensor:
        """(heads, N, N) map in row order, zero across segments. O(N^2) memory: small inputs only."""
        heads = self.probs[0].shape[1]
        out = torch.zeros(heads, num_tokens, num_tokens, dtype=torch.float32, device=self.probs[0].device)
        for probs, index in zip(self.probs, self.token_index):
            rows = index[:, :, None].expand(-1, -1, index.shape[1])  # (S_g, L, L)
            cols = index[:, None, :].expand(-1, index.shape[1], -1)
            out[:, rows, cols] = probs.permute(1, 0, 2, 3)  # (heads, S_g, L, L)
        return out


def segment_attention_maps(q: Tensor, k: Tensor, segments: Segments, scale: float) -> SegmentMaps:
    """The exact fp32 probabilities softmax(q k^T * scale) of every segment, per length group."""
    probs = []
    for group in segments.groups:
        qg, kg = _gather_group(q, group), _gather_group(k, group)
        scores = torch.matmul(qg.float(), kg.float().transpose(-1, -2)) * scale  # (S_g, H, L, L)
        probs.append(scores.softmax(dim=-1))
    return SegmentMaps(probs, [segments.rows(group.index) for group in segments.groups])


def segment_attention_from_maps(v: Tensor, segments: Segments, maps: SegmentMaps) -> Tensor:
    """Output (N, H, D) of segment attention given per-group probability maps (possibly replaced)."""
    out = v.new_empty(v.shape)
    for group, probs in zip(segments.groups, maps.probs):
        _scatter_group(out, torch.matmul(probs.to(v.dtype), _gather_group(v, group)), group)
    return out


# ---- text: causal with optional padding mask ----------------------------------------------------------------
def causal_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """SDPA; see the module docstring for the contract (mask None: causal, queries at the end)."""
    causal = mask is None and q.shape[2] > 1
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True
    )


def causal_attention_maps(q: Tensor, k: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """The exact fp32 probabilities (B, H, T, K) that `causal_attention` applies."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # query head i uses kv head i // groups
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B, H, T, K)
    if mask is None:
        t, total = q.shape[2], k.shape[2]
        mask = torch.ones(t, total, dtype=torch.bool, device=q.device).tril(total - t)
    # in place: the scores are this function's own, so masking them costs no second (B, H, T, K) buffer
    return scores.masked_fill_(~mask, float("-inf")).softmax(dim=-1)


def causal_attention_from_maps(v: Tensor, probs: Tensor) -> Tensor:
    """Output (B, H, T, Dh) given probabilities (B, H, T, K) over the keys of kv heads v (B, G, K, Dh)."""
    v = v.repeat_interleave(probs.shape[1] // v.shape[1], dim=1)
    return torch.matmul(probs.to(v.dtype), v)
