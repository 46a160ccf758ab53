"""Vision tower of Qwen2-VL and Qwen2.5-VL: patch embedding, ViT blocks with 2D rotary, 2x2 patch merger.

Shape legend: N patches (pixel_values rows), D ViT width, H heads, Dh head dim (80), R = Dh/2,
M = N/4 merged tokens, E merger output width (= LLM width), U = N/4 merge units of 4 patch rows.

Qwen2.5-VL attends within 8x8-patch windows except in `fullatt_block_indexes`. The tower permutes its
tokens once into window order (whole merge units, so each window is a contiguous run), runs every block
in that order, and restores input order before the merger; Qwen2-VL needs no permutation. Everything a
caller sees (outputs, taps) is in input row order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import dispatch
from .attention import attention_from_probs, segment_attention_probs
from .config import VisionConfig
from .layers import QuickGeluMLP, RMSNorm, SwiGLU
from .rope import vision_rotary_table
from .segments import Segments, frame_lengths, window_layout
from .taps import SegmentMaps, Taps


@dataclass(frozen=True)
class VisionLayout:
    """Everything about one batch of images/videos that the blocks need, computed once per forward."""

    cos: Tensor  # (N, R) fp32, internal order
    sin: Tensor
    frames: Segments  # per-temporal-patch segments (full attention)
    windows: Segments | None  # Qwen2.5-VL windows (internal order), None for Qwen2-VL
    order: Tensor | None  # (N,) input row of each internal position; None when internal = input order
    inverse: Tensor | None  # (N,) internal position of each input row

    def to_internal(self, x: Tensor) -> Tensor:
        return x if self.order is None else x[self.order]

    def to_input(self, x: Tensor) -> Tensor:
        return x if self.inverse is None else x[self.inverse]

    def segments_for(self, config: VisionConfig, block: int) -> Segments:
        return self.frames if self.windows is None or config.is_full_attention(block) else self.windows


def check_vision_inputs(config: VisionConfig, pixel_values: Tensor, grid_thw: Tensor, what: str) -> None:
    """Raise a clear error for pixel rows / grids that do not describe each other (what, expected)."""
    if (
        not isinstance(pixel_values, Tensor)
        or not pixel_values.is_floating_point()
        or pixel_values.dim() != 2
    ):
        raise ValueError(
            f"{what} must be a floating-point tensor of shape (patches, {config.patch_dim}), got "
            f"{_describe(pixel_values)}"
        )
    if pixel_values.shape[1] != config.patch_dim:
        raise ValueError(
            f"{what} rows must hold {config.patch_dim} values (channels x temporal patch x patch x patch), "
            f"got {pixel_values.shape[1]}"
        )
    if (
        not isinstance(grid_thw, Tensor)
        or grid_thw.dtype.is_floating_point
        or grid_thw.dim() != 2
        or grid_thw.shape[1] != 3
    ):
        raise ValueError(
            f"the grid for {what} must be an integer tensor of shape (items, 3), got {_describe(grid_thw)}"
        )
    if (grid_thw <= 0).any():
        raise ValueError(f"grid for {what} has non-positive sides: {grid_thw.tolist()}")
    m = config.merge_size
    if ((grid_thw[:, 1:] % m) != 0).any():
        raise ValueError(
            f"grid (t, h, w) for {what} must have h and w divisible by the merge size {m}, got {grid_thw.tolist()}"
        )
    expected = int(grid_thw.prod(dim=1).sum())
    if pixel_values.shape[0] != expected:
        raise ValueError(
            f"{what} has {pixel_values.shape[0]} rows but its grid {grid_thw.tolist()} needs sum(t*h*w) = "
            f"{expected}"
        )


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def vision_layout(config: VisionConfig, grid_thw: Tensor, device: torch.device) -> VisionLayout:
    grid_thw = grid_thw.cpu()
    cos, sin = vision_rotary_table(grid_thw, config.head_dim, config.rope_theta, config.merge_size)
    frames = Segments.from_lengths(frame_lengths(grid_thw), device)
    if config.family == "qwen2_vl":
        return VisionLayout(cos.to(device), sin.to(device), frames, None, None, None)
    unit_index, window_sizes = window_layout(grid_thw, config.window_merged, config.merge_size)
    unit = config.merge_size**2
    order = (unit_index[:, None] * unit + torch.arange(unit)).reshape(-1)  # (U, 4) -> (N,) rows
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    return VisionLayout(
        cos[order].to(device),
        sin[order].to(device),
        frames,
        Segments.from_lengths(window_sizes, device),
        order.to(device),
        inverse.to(device),
    )


class VisionAttention(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.proj = nn.Linear(config.width, config.width)

    def forward(
        self, x: Tensor, layout: VisionLayout, segments: Segments, maps_tap: tuple[Taps, str] | None = None
    ) -> Tensor:
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, self.head_dim).unbind(1)  # 3 x (N, H, Dh)
        q, k = dispatch.rotary(q, k, layout.cos, layout.sin)
        scale = self.head_dim**-0.5
        if maps_tap is None:
            out = dispatch.segment_attention(q, k, v, segments, scale)
        else:
            out = self._attention_with_maps(q, k, v, layout, segments, scale, *maps_tap)
        return self.proj(out.reshape(n, -1))  # (N, H, Dh) -> (N, D)

    @staticmethod
    def _attention_with_maps(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        layout: VisionLayout,
        segments: Segments,
        scale: float,
        taps: Taps,
        name: str,
    ) -> Tensor:
        out, probs = segment_attention_probs(q, k, v, segments, scale)
        index = []
        for group in segments.groups:
            positions = group.token_positions()  # (S_g, L)
            index.append(positions if layout.order is None else layout.order[positions])
        maps = taps(name, SegmentMaps(probs, index))
        if name in taps.replace:
            out = attention_from_probs(v, segments, maps.probs)
        return out


class VisionBlock(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        if config.family == "qwen2_vl":
            self.norm1 = nn.LayerNorm(config.width, eps=config.norm_eps)
            self.norm2 = nn.LayerNorm(config.width, eps=config.norm_eps)
            self.mlp: nn.Module = QuickGeluMLP(config.width, config.mlp_hidden)
        else:
            self.norm1 = RMSNorm(config.width, config.norm_eps)
            self.norm2 = RMSNorm(config.width, config.norm_eps)
            self.mlp = SwiGLU(config.width, config.mlp_hidden, bias=True)
        self.attn = VisionAttention(config)

    def forward(
        self, x: Tensor, layout: VisionLayout, segments: Segments, maps_tap: tuple[Taps, str] | None = None
    ) -> Tensor:
        x = x + self.attn(self.norm1(x), layout, segments, maps_tap)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """norm -> concatenate each 2x2 merge block's 4 rows -> Linear(4D, 4D) -> GELU(erf) -> Linear(4D, E)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        merged = config.width * config.merge_size**2
        if config.family == "qwen2_vl":
            self.norm: nn.Module = nn.LayerNorm(config.width, eps=config.norm_eps)
        else:
            self.norm = RMSNorm(config.width, config.norm_eps)
        self.fc1 = nn.Linear(merged, merged)
        self.fc2 = nn.Linear(merged, config.out_width)
        self.merged = merged

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x).view(
            -1, self.merged
        )  # (N, D) -> (M, 4D): the 4 rows of a block, (0,0),(0,1),(1,0),(1,1)
        return self.fc2(F.gelu(self.fc1(x)))


class VisionTower(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        # Conv3d with kernel == stride and no bias over a (C, T, P, P) patch == a Linear on the flat row
        self.patch_embed = nn.Linear(config.patch_dim, config.width, bias=False)
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.depth))
        self.merger = PatchMerger(config)

    def forward(self, pixel_values: Tensor, grid_thw: Tensor) -> Tensor:
        """Merged features (M, E) in input order: one row per image/video pad token."""
        return self.run(pixel_values, grid_thw)

    def run(
        self, pixel_values: Tensor, grid_thw: Tensor, taps: Taps | None = None, what: str = "pixel_values"
    ) -> Tensor:
        cfg = self.config
        check_vision_inputs(cfg, pixel_values, grid_thw, what)
        layout = vision_layout(cfg, grid_thw, pixel_values.device)
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # (N, D), input order
        if taps is not None:
            x = taps("vision.patch_embed", x)
        x = layout.to_internal(x)
        for i, block in enumerate(self.blocks):
            maps_name = f"vision.blocks.{i}.attn.probs"
            maps_tap = (taps, maps_name) if taps is not None and taps.active(maps_name) else None
            x = block(x, layout, layout.segments_for(cfg, i), maps_tap)
            if taps is not None and taps.active(f"vision.blocks.{i}"):
                x = layout.to_internal(taps(f"vision.blocks.{i}", layout.to_input(x)))
        x = layout.to_input(x)  # merge units are contiguous in both orders; the merger runs on input order
        if taps is not None:
            x = taps("vision.pre_merge", x)
        merged = self.merger(x)
        if taps is not None:
            merged = taps("vision.post_merge", merged)
        return merged
