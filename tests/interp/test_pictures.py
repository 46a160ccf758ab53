"""The heatmaps, checked by their pixels: `demo_attention.png` has a colour bar per panel and its map is drawn
over a greyscale copy of the image (as `attend`'s are); `attend`'s vision map of a window-attention block
outlines the windows, and that of a full-attention block does not.

Greyscale, from pixels alone: inside one patch the heat colour is one constant, so the difference between
two pixels of the patch is (1 - alpha) x the difference of the background there. Over a greyscale copy that
difference is the same in R, G and B (up to the rounding of the blend); over the picture's own colours it
is not wherever the picture changes colour inside a patch (the demo's house against its sky)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_attend import HEIGHT, WIDTH, bright_square_image, user_dir  # noqa: F401  (the tiny HF directory)

from qwenvl_min.cli.demo import demo_image
from qwenvl_min.cli.main import main
from qwenvl_min.interp.overlay import COLORBAR_WIDTH, WINDOW_EDGE, draw_scaled_heatmap, heat_colors

_BAR_X = 17  # a column inside the bar, counted from the strip's left edge (overlay._BAR = (8, 26))


def _scale(width: int, height: int) -> int:
    return max(1, min(4, round(640 / max(width, height))))  # overlay's upscale of small inputs


def _channel_spread_within_patches(pixels: np.ndarray, step: int) -> int:
    """The largest (max - min over R, G, B) of the difference between two pixels of one patch, over every
    patch and a few pixel pairs each (kept 3 px inside the patch: away from outlines)."""
    rows, cols = pixels.shape[0] // step, pixels.shape[1] // step
    worst = 0
    inside = [3, step // 2, step - 4]
    for r in range(rows):
        for c in range(cols):
            y0, x0 = r * step, c * step
            ref = pixels[y0 + 3, x0 + 3]
            for dy in inside:
                for dx in inside:
                    diff = pixels[y0 + dy, x0 + dx] - ref
                    worst = max(worst, int(diff.max() - diff.min()))
    return worst


def _check_colour_bar(pixels: np.ndarray, x_image_end: int, height: int) -> None:
    bar = pixels[:height, x_image_end + _BAR_X]  # top to bottom
    np.testing.assert_allclose(bar[0], heat_colors(np.array(1.0)), atol=2)  # the scale's top colour
    np.testing.assert_allclose(bar[-1], heat_colors(np.array(0.0)), atol=2)  # its bottom colour
    brightness = bar.sum(-1)
    assert (np.diff(brightness) <= 3).all()  # darker all the way down (rounding aside)


def test_demo_attention_has_colour_bars_and_a_greyscale_background(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--new-tokens", "1", "-q"]) == 0
    capsys.readouterr()
    with Image.open(tmp_path / "demo_attention.png") as picture:
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    # the demo image, 300 x 220, resized to 308 x 224 (22 x 16 patches), upscaled for display
    width, height = 308, 224
    s = _scale(width, height)
    panel = width * s + COLORBAR_WIDTH
    for left in (0, panel + 8):  # two panels side by side, 8 px apart
        image = pixels[: height * s, left : left + width * s]
        _check_colour_bar(pixels[:, left:], width * s, height * s)
        assert _channel_spread_within_patches(image, 14 * s) <= 2
    # the check can fail: the picture's own colours, resized the same way, spread widely inside patches
    colour = np.asarray(demo_image().resize((width, height), Image.Resampling.BICUBIC)).astype(int)
    assert _channel_spread_within_patches(colour, 14) > 40
    caption = pixels[height * s + 8 :, :panel]
    assert (caption > 200).any()  # caption text under the picture


def test_heat_is_drawn_over_a_greyscale_copy():
    """A saturated yellow picture under the scale's bottom colour: over grey, R = G (and B only the heat's
    own 4 levels apart); over the picture's colours it would keep yellow's B = 0 against R = G = 255."""
    yellow = np.zeros((56, 84, 3), dtype=np.uint8)
    yellow[..., :2] = 255
    values = np.zeros((4, 6))
    picture = draw_scaled_heatmap(yellow, values, vmin=0.0, vmax=1.0)
    s = _scale(84, 56)
    pixels = np.asarray(picture).astype(int)[: 56 * s, : 84 * s]
    grey = round(0.299 * 255 + 0.587 * 255)  # PIL's luminance of yellow
    expected = 0.35 * grey + 0.65 * heat_colors(np.array(0.0))  # alpha 0.65 of the heat
    np.testing.assert_allclose(
        pixels.reshape(-1, 3), np.broadcast_to(expected, (pixels.size // 3, 3)), atol=1
    )


@pytest.mark.parametrize(("block", "windows"), [(2, True), (3, False)])  # tiny Qwen2.5-VL: 1, 3 are full
def test_vision_maps_outline_the_windows_of_window_blocks(user_dir, tmp_path, capsys, block, windows):  # noqa: F811
    image = tmp_path / "square.png"
    bright_square_image().save(image)
    out = tmp_path / "maps"
    argv = ["attend", "--model", str(user_dir), "--image", str(image), "--prompt", "Describe this image."]
    argv += ["--out", str(out), "--answer", "This", "--vision-block", str(block), "-q"]
    assert main(argv) == 0
    capsys.readouterr()
    with Image.open(out / f"vision_block_{block}.png") as picture:
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    s = _scale(WIDTH, HEIGHT)
    image_part = pixels[: HEIGHT * s, : WIDTH * s]
    edge = (image_part == WINDOW_EDGE).all(-1)  # (H, W): pixels in the outline colour
    # 168 x 112 px = 12 x 8 patches; windows of 4 x 4 merged tokens = 8 x 8 patches: one inner edge, at
    # patch column 8 (x = 8 * 14 * s), and none across (the image is 8 patches high)
    columns = np.flatnonzero(edge.all(0))
    assert (columns.size > 0) is windows
    if windows:
        assert set(columns) <= set(range(8 * 14 * s - 2, 8 * 14 * s + 2))
        assert not edge.all(1).any()  # no horizontal edge
    else:
        assert not edge.any()
    _check_colour_bar(pixels, WIDTH * s, HEIGHT * s)
