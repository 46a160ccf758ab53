"""Pictures of what the vision tower sees: the patch tiling of an input and attention heatmaps.

Everything here works from the model's own inputs (pixel_values rows and grid_thw), so a picture shows
exactly the pixels, patches, 2x2 merge blocks and attention windows the model uses, after smart_resize.
Heatmaps (`draw_scaled_heatmap`) are blended over a greyscale copy of the frame, on a fixed scale shown by
a colour bar, so the picture's own colours never read as heat.

Shapes (letters as in docs/design.md, "Shape legend"): N; h x w patches per frame of p x p pixels (p = 14).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..inputs.preprocess import IMAGE_MEAN, IMAGE_STD
from ..model.geometry import patch_coordinates, rows_to_frames

WINDOW_COLORS = ((255, 80, 80), (80, 200, 255), (255, 210, 60), (120, 230, 120), (220, 120, 255))
# "inferno"-like anchors (dark purple -> red -> yellow) for heatmaps, interpolated linearly
_HEAT = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def frames_from_patches(
    pixel_values: Tensor,
    grid_thw: tuple[int, int, int],
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    image_mean: tuple[float, ...] = IMAGE_MEAN,
    image_std: tuple[float, ...] = IMAGE_STD,
) -> np.ndarray:
    """Undo patchify + normalize for one image/video: rows (t*h*w, C*T*P*P) -> uint8 frames (t*T, h*P, w*P, C).
    (Qwen3-VL: patch_size 16, mean / std 0.5.)"""
    t, h, w = grid_thw
    p, tp, m = patch_size, temporal_patch_size, merge_size
    x = rows_to_frames(pixel_values.detach().float().cpu().numpy(), (t, h, w), p, tp, m)  # (t*tp, H, W, C)
    x = x * np.asarray(image_std, dtype=np.float32) + np.asarray(image_mean, dtype=np.float32)  # in [0, 1]
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _scale_for(width: int, height: int) -> int:
    """Upscale small inputs so a 14-px patch is visible; big ones stay 1:1."""
    return max(1, min(4, round(640 / max(width, height))))


CAPTION_FONT, CAPTION_LINE, CAPTION_MIN_WIDTH = 14, 18, 420


def caption_size(image_size: tuple[int, int], lines: list[str]) -> tuple[int, int]:
    """(width, height) of an image of `image_size` with `lines` of caption under it: wide enough for the
    longest line, and never narrower than CAPTION_MIN_WIDTH."""
    font = _font(CAPTION_FONT)
    text = max((int(np.ceil(font.getlength(line))) + 12 for line in lines), default=0)
    return max(image_size[0], CAPTION_MIN_WIDTH, text), image_size[1] + 8 + CAPTION_LINE * len(lines)


def _with_caption(image: Image.Image, lines: list[str]) -> Image.Image:
    font = _font(CAPTION_FONT)
    line_height = CAPTION_LINE
    out = Image.new("RGB", caption_size(image.size, lines), (24, 24, 28))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((6, image.height + 4 + i * line_height), line, fill=(235, 235, 235), font=font)
    return out


def draw_tiling(
    frame: np.ndarray,
    grid_hw: tuple[int, int],
    *,
    patch_size: int = 14,
    merge_size: int = 2,
    window_merged: int | None = None,
    caption: list[str] | None = None,
) -> Image.Image:
    """The resized frame with its patch grid (thin), 2x2 merge blocks (brighter) and, for Qwen2.5-VL,
    attention windows of `window_merged` x `window_merged` merged tokens (coloured, numbered)."""
    h, w = grid_hw
    base = Image.fromarray(frame).convert("RGBA")
    s = _scale_for(base.width, base.height)
    base = base.resize((base.width * s, base.height * s), Image.Resampling.NEAREST)
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    step = patch_size * s
    for i in range(h + 1):
        strong = i % merge_size == 0
        draw.line([(0, i * step), (base.width, i * step)], fill=(255, 255, 255, 150 if strong else 55))
    for j in range(w + 1):
        strong = j % merge_size == 0
        draw.line([(j * step, 0), (j * step, base.height)], fill=(255, 255, 255, 150 if strong else 55))
    if window_merged is not None:
        win = window_merged * merge_size * step  # window side in screen pixels
        rows, cols = -(-h // (window_merged * merge_size)), -(-w // (window_merged * merge_size))
        font = _font(max(11, 7 * s))
        for r in range(rows):
            for c in range(cols):
                color = WINDOW_COLORS[(r * cols + c) % len(WINDOW_COLORS)]
                x0, y0 = c * win, r * win
                x1, y1 = min(x0 + win, base.width) - 1, min(y0 + win, base.height) - 1
                draw.rectangle([x0 + 1, y0 + 1, x1 - 1, y1 - 1], outline=(*color, 255), width=max(2, s))
                draw.text((x0 + 4 * s, y0 + 2 * s), str(r * cols + c), fill=(*color, 255), font=font)
    image = Image.alpha_composite(base, layer).convert("RGB")
    return _with_caption(image, caption or [])


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 through the heat colormap."""
    x = np.clip(values, 0, 1) * (len(_HEAT) - 1)
    low = np.floor(x).astype(int).clip(0, len(_HEAT) - 2)
    frac = (x - low)[..., None]
    return (_HEAT[low] * (1 - frac) + _HEAT[low + 1] * frac).round().astype(np.uint8)


def patch_grid_values(values: Tensor, grid_thw: tuple[int, int, int], merge_size: int = 2) -> np.ndarray:
    """Per-row values (N,) of one image in pixel_values row order -> (h, w) array over the patch grid
    (first temporal patch)."""
    t, h, w = grid_thw
    coords = patch_coordinates(torch.tensor([[1, h, w]]), merge_size)  # (h*w, 2) row, col
    out = np.zeros((h, w), dtype=np.float64)
    out[coords[:, 0].numpy(), coords[:, 1].numpy()] = values[: h * w].detach().double().cpu().numpy()
    return out


def patch_row_index(grid_thw: tuple[int, int, int], row: int, col: int, merge_size: int = 2) -> int:
    """The pixel_values row (first temporal patch) of patch (row, col)."""
    _, h, w = grid_thw
    coords = patch_coordinates(torch.tensor([[1, h, w]]), merge_size)
    return int(((coords[:, 0] == row) & (coords[:, 1] == col)).nonzero()[0])


COLORBAR_WIDTH = 84  # the strip right of a scaled heatmap: the bar and its labels
_BAR = (8, 26)  # x range of the bar inside the strip


def scale_position(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Values -> [0, 1] on the scale vmin..vmax (all 0 when the scale is a single value)."""
    span = vmax - vmin
    return np.clip((values - vmin) / span, 0, 1) if span > 0 else np.zeros_like(values, dtype=np.float64)


def _colorbar(height: int, vmin: float, vmax: float, background: tuple[int, int, int]) -> Image.Image:
    """A vertical bar, vmax's colour at the top and vmin's at the bottom, with both values and the middle."""
    strip = Image.new("RGB", (COLORBAR_WIDTH, height), background)
    ramp = heat_colors(np.linspace(1, 0, height))  # (height, 3) top = 1
    bar = np.repeat(ramp[:, None, :], _BAR[1] - _BAR[0], axis=1)
    strip.paste(Image.fromarray(bar), (_BAR[0], 0))
    draw = ImageDraw.Draw(strip)
    font = _font(11)
    for value, y in ((vmax, 0), ((vmin + vmax) / 2, height // 2 - 6), (vmin, height - 13)):
        draw.text((_BAR[1] + 4, max(0, y)), f"{value:.3g}", fill=(235, 235, 235), font=font)
    return strip


WINDOW_EDGE = (80, 200, 255)  # window outlines on heatmaps: a blue no heat colour over grey can take
MARKER = (0, 255, 255)  # the outline of a marked patch (e.g. the query of an attention map)


def greyscale(frame: np.ndarray) -> Image.Image:
    """The frame's luminance as an RGB image: heat drawn over it reads as heat, not as the picture's own
    colours (a yellow object would look hot on a yellow-topped scale)."""
    return Image.fromarray(frame).convert("L").convert("RGB")


def draw_scaled_heatmap(
    frame: np.ndarray,
    values: np.ndarray,
    *,
    vmin: float,
    vmax: float,
    patch_size: int = 14,
    caption: list[str] | None = None,
    alpha: float = 0.65,
    marker: tuple[int, int] | None = None,
    window_patches: int | None = None,
) -> Image.Image:
    """Per-patch values (h, w) coloured on the fixed scale vmin..vmax and blended over a greyscale copy of
    the resized frame, with a colour bar labelled with the scale's ends on the right and `caption` below.
    `marker` outlines one patch (row, col); `window_patches` outlines the attention windows (squares of
    that many patches a side, tiled from the top-left: the windows of a Qwen2.5-VL window block).

    Size: (w*P*s + COLORBAR_WIDTH, h*P*s) before the caption (`caption_size`), s = the upscale of small
    inputs (`_scale_for`)."""
    base = greyscale(frame)
    heat = heat_colors(scale_position(values, vmin, vmax))
    heat = heat.repeat(patch_size, axis=0).repeat(patch_size, axis=1)
    blended = Image.blend(base, Image.fromarray(heat), alpha)
    s = _scale_for(base.width, base.height)
    blended = blended.resize((base.width * s, base.height * s), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(blended)
    step = patch_size * s
    if window_patches is not None:
        side = window_patches * step
        for x in range(side, blended.width, side):
            draw.line([(x, 0), (x, blended.height - 1)], fill=WINDOW_EDGE, width=max(1, s // 2))
        for y in range(side, blended.height, side):
            draw.line([(0, y), (blended.width - 1, y)], fill=WINDOW_EDGE, width=max(1, s // 2))
    if marker is not None:
        r, c = marker
        draw.rectangle([c * step, r * step, (c + 1) * step - 1, (r + 1) * step - 1], outline=MARKER, width=2)
    background = (24, 24, 28)
    panel = Image.new("RGB", (blended.width + COLORBAR_WIDTH, blended.height), background)
    panel.paste(blended, (0, 0))
    panel.paste(_colorbar(blended.height, vmin, vmax, background), (blended.width, 0))
    return _with_caption(panel, caption or [])


def side_by_side(*pictures: Image.Image, gap: int = 8) -> Image.Image:
    """Pictures in a row on the caption background, tops aligned."""
    width = sum(p.width for p in pictures) + gap * (len(pictures) - 1)
    panel = Image.new("RGB", (width, max(p.height for p in pictures)), (24, 24, 28))
    x = 0
    for picture in pictures:
        panel.paste(picture, (x, 0))
        x += picture.width + gap
    return panel
