"""Vision tower of Qwen2-VL and Qwen2.5-VL: patch embedding, ViT blocks with 2D rotary, 2x2 patch merger.

The blocks, the attention and the merger are shared with the Qwen3-VL tower (`vision_qwen3`), which adds
learned positions and the DeepStack mergers around them; each family's choice of norm and MLP is one
branch in `VisionBlock` / `PatchMerger`.

Shapes (letters as in docs/design.md, "Shape legend"): N, D, H, Dh, R, M, E.

Every module here takes and returns rows in pixel_values row order (`qwenvl_min.model.geometry`), so a
forward hook anywhere in the tower sees that order. Qwen2.5-VL's windows are not contiguous in that
order; the window attention gathers its fused q, k, v into window order right after the qkv projection
and scatters the result back right before proj (two row gathers per window block; the frames of the
full-attention blocks are contiguous in row order and need none).

Everything that depends on the grids (rotary tables, segments, window order) is computed once per
forward by `vision_layout`, before the blocks, so the blocks never read a device value back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.validate import check_finite
from . import dispatch
from .config import VisionConfig
from .geometry import frame_lengths, learned_grid_taps, window_row_order
from .layers import GeluTanhMLP, QuickGeluMLP, RMSNorm, SwiGLU
from .rope import vision_rotary_table
from .segments import Segments


@dataclass(frozen=True)
class VisionLayout:
    """Everything about one batch of images/videos that the blocks need, computed once per forward."""

    cos: Tensor  # (N, R) fp32, row order (= the frames' packed order)
    sin: Tensor
    frames: Segments  # per-temporal-patch segments (full attention)
    windows: Segments | None  # Qwen2.5-VL windows; None for Qwen2-VL
    window_cos: Tensor | None  # (N, R) fp32 in the windows' packed order
    window_sin: Tensor | None
    # Qwen3-VL: the learned position grid's 4 taps per row, (N, 4) int64 and (N, 4) fp32 bilinear weights
    position_taps: Tensor | None = None
    position_weights: Tensor | None = None

    def for_block(self, full_attention: bool) -> tuple[Segments, Tensor, Tensor]:
        """The segments and rotary tables (in those segments' packed order) of one attention module."""
        if full_attention or self.windows is None:
            return self.frames, self.cos, self.sin
        return self.windows, self.window_cos, self.window_sin


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
    check_finite(what, pixel_values, "one NaN pixel turns every logit into NaN")


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def vision_layout(config: VisionConfig, grid_thw: Tensor, device: torch.device) -> VisionLayout:
    """The layout of a (checked) grid: rotary tables and attention segments on `device`."""
    grid_thw = grid_thw.cpu()
    cos, sin = vision_rotary_table(grid_thw, config.head_dim, config.rope_theta, config.merge_size)
    frames = Segments.from_lengths(frame_lengths(grid_thw), device)
    if config.family == "qwen3_vl":
        taps, weights = learned_grid_taps(grid_thw, config.position_grid_side, config.merge_size)
        return VisionLayout(
            cos.to(device), sin.to(device), frames, None, None, None, taps.to(device), weights.to(device)
        )
    if config.family != "qwen2_5_vl":
        return VisionLayout(cos.to(device), sin.to(device), frames, None, None, None)
    order, sizes = window_row_order(grid_thw, config.window_merged, config.merge_size)
    windows = Segments.from_lengths(sizes, device, order=order)
    return VisionLayout(
        cos.to(device), sin.to(device), frames, windows, cos[order].to(device), sin[order].to(device)
    )


class VisionAttention(nn.Module):
    """Fused qkv -> 2D rotary -> `attend` within segments -> proj.

    `attend(q, k, v, segments, scale)` (contract in `qwenvl_min.model.attention`) is a plain attribute:
    assign another function to change this block's attention; parameters and keys are unaffected.
    """

    def __init__(self, config: VisionConfig, full_attention: bool, kernels: str = "auto") -> None:
        super().__init__()
        # num_heads is the config's (all heads); under tensor parallelism qkv/proj hold only this rank's
        # heads, so forward takes the head count from the projection's width, never from num_heads
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.full_attention = full_attention  # per-frame segments instead of windows (always for Qwen2-VL)
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.proj = nn.Linear(config.width, config.width)
        self.set_kernels(kernels)

    def set_kernels(self, choice: str) -> None:
        """Reset `attend` and `rotary` to the defaults of a resolved kernel choice (see `dispatch`)."""
        self.attend = dispatch.vision_attend(choice)
        self.rotary = dispatch.rotary(choice)

    def forward(self, x: Tensor, layout: VisionLayout) -> Tensor:
        n = x.shape[0]
        segments, cos, sin = layout.for_block(self.full_attention)
        qkv = self.qkv(x).view(n, 3, -1, self.head_dim)  # (N, 3D) -> (N, 3, H, Dh), row order
        if segments.order is not None:
            qkv = qkv.index_select(0, segments.order)  # rows into packed (window) order: one gather
        q, k, v = qkv.unbind(1)  # 3 x (N, H, Dh)
        q, k = self.rotary(q, k, cos, sin)
        out = self.attend(q, k, v, segments, self.head_dim**-0.5)  # (N, H, Dh), packed order
        if segments.inverse is not None:
            out = out.index_select(0, segments.inverse)  # back to row order
        return self.proj(out.reshape(n, -1))  # (N, H, Dh) -> (N, D)


class VisionBlock(nn.Module):
    def __init__(self, config: VisionConfig, index: int, kernels: str = "auto") -> None:
        super().__init__()
        if config.family == "qwen2_vl":
            self.norm1 = nn.LayerNorm(config.width, eps=config.norm_eps)
            self.norm2 = nn.LayerNorm(config.width, eps=config.norm_eps)
            self.mlp: nn.Module = QuickGeluMLP(config.width, config.mlp_hidden)
        elif config.family == "qwen3_vl":
            self.norm1 = nn.LayerNorm(config.width, eps=config.norm_eps)
            self.norm2 = nn.LayerNorm(config.width, eps=config.norm_eps)
            self.mlp = GeluTanhMLP(config.width, config.mlp_hidden)
        else:
            self.norm1 = RMSNorm(config.width, config.norm_eps)
            self.norm2 = RMSNorm(config.width, config.norm_eps)
            self.mlp = SwiGLU(config.width, config.mlp_hidden, bias=True)
        self.attn = VisionAttention(config, config.is_full_attention(index), kernels)

    def forward(self, x: Tensor, layout: VisionLayout) -> Tensor:
        x = x + self.attn(self.norm1(x), layout)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """norm -> concatenate each 2x2 merge block's 4 rows -> Linear(4D, 4D) -> GELU(erf) -> Linear(4D, E).

    `after_concat` (Qwen3-VL's DeepStack mergers) normalizes the concatenated 4D row instead of each D
    row (LayerNorm over 4D)."""

    def __init__(self, config: VisionConfig, after_concat: bool = False) -> None:
        super().__init__()
        merged = config.width * config.merge_size**2
        if config.family == "qwen2_5_vl":
            self.norm: nn.Module = RMSNorm(config.width, config.norm_eps)
        else:
            self.norm = nn.LayerNorm(merged if after_concat else config.width, eps=config.norm_eps)
        self.fc1 = nn.Linear(merged, merged)
        self.fc2 = nn.Linear(merged, config.out_width)
        self.merged = merged
        self.after_concat = after_concat

    def forward(self, x: Tensor) -> Tensor:
        # (N, D) -> (M, 4D): a merged token's rows are consecutive, (0,0),(0,1),(1,0),(1,1)
        if self.after_concat:
            x = self.norm(x.view(-1, self.merged))
        else:
            x = self.norm(x).view(-1, self.merged)
        return self.fc2(F.gelu(self.fc1(x)))


class VisionTower(nn.Module):
    def __init__(self, config: VisionConfig, kernels: str | None = None) -> None:
        super().__init__()
        self.config = config
        kernels = dispatch.resolve_kernels(kernels)
        # Conv3d with kernel == stride and no bias over a (C, T, P, P) patch == a Linear on the flat row
        self.patch_embed = nn.Linear(config.patch_dim, config.width, bias=False)
        self.blocks = nn.ModuleList(VisionBlock(config, i, kernels) for i in range(config.depth))
        self.merger = PatchMerger(config)

    def layout(self, pixel_values: Tensor, grid_thw: Tensor, what: str = "pixel_values") -> VisionLayout:
        """Check pixel rows against their grid (the one validation pass) and compute the layout."""
        check_vision_inputs(self.config, pixel_values, grid_thw, what)
        return vision_layout(self.config, grid_thw, pixel_values.device)

    def forward(self, pixel_values: Tensor, grid_thw: Tensor, layout: VisionLayout | None = None) -> Tensor:
        """Merged features (M, E), one row per image/video pad token, from pixel_values (N, patch_dim).

        `layout` (from `self.layout(pixel_values, grid_thw)`) may be passed when it is already computed,
        e.g. by the full model or ahead of a compiled call; it is then trusted to describe grid_thw.
        Without it, the layout is computed here, outside any graph torch.compile traces (one graph
        break; with fullgraph=True an error that says to pass it).
        """
        if layout is None:
            layout = layout_outside_graph(self, pixel_values, grid_thw)
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # (N, D)
        for block in self.blocks:
            x = block(x, layout)
        return self.merger(x)


@torch.compiler.disable(
    reason="the vision layout reads grid_thw's values (checks, segment lengths, window order); compute it "
    "before the compiled call and pass it: model.visual(pixel_values, grid_thw, "
    "layout=model.visual.layout(pixel_values, grid_thw))"
)
def layout_outside_graph(tower: nn.Module, pixel_values: Tensor, grid_thw: Tensor) -> VisionLayout:
    """`tower.layout(...)` run eagerly even inside torch.compile: it reads device values back (the checks,
    segment lengths, the window order), which a traced graph cannot hold. Compiled as users call it,
    `torch.compile(model.visual)(pixel_values, grid_thw)` then breaks its graph here once, and the blocks
    and merger after it are one graph."""
    return tower.layout(pixel_values, grid_thw)  # type: ignore[operator]
