"""`qwenvl-min attend` and `qwenvl_min.interp.attention_maps`: the maps sum as they should (rows over all keys to 1,
the image part equal to the probability mass on the image's pad positions, the vision map to 1 over the
patches), they land on the image's patches (a hand-built attention that follows the image's one bright
square puts the maximum on that square, in the map and in the PNG), and the PNGs have their size, colour
bar and captions. Tiny random models (fp32)."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
import torch
from hf_models import randomize_
from hf_user_dir import make_user_dir
from PIL import Image

from qwenvl_min import Config, QwenVL, SegmentMaps
from qwenvl_min.cli.main import main
from qwenvl_min.inputs.preprocess import preprocess_image
from qwenvl_min.inputs.processor import Processor
from qwenvl_min.interp.attention_maps import answer_attention, merged_to_patch_grid
from qwenvl_min.interp.overlay import COLORBAR_WIDTH, draw_scaled_heatmap, frames_from_patches
from qwenvl_min.utils.fs import current_umask

# a 168 x 112 image needs no resize (multiples of 28 inside the default pixel budget): 8 x 12 patches,
# 4 x 6 merged tokens; the bright square covers merged token (row 1, col 3) = patches rows 2-3, cols 6-7
WIDTH, HEIGHT, SQUARE = 168, 112, (1, 3)


def bright_square_image() -> Image.Image:
    pixels = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    r, c = SQUARE
    pixels[28 * r : 28 * (r + 1), 28 * c : 28 * (c + 1)] = 255
    return Image.fromarray(pixels)


@pytest.fixture(scope="module", params=["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def model(request) -> QwenVL:
    model = QwenVL(Config.preset(request.param)).eval()
    randomize_(model, seed=5)
    return model


def _sequence(cfg: Config, merged: int) -> torch.Tensor:
    """text, the image block, text, then three 'answer' tokens."""
    block = [cfg.vision_start_token_id, *[cfg.image_token_id] * merged, cfg.vision_end_token_id]
    return torch.tensor([[11, 12, 13, *block, 14, 15, 16, 17, 18]])


def test_rows_sum_to_one_and_the_image_part_is_the_mass_on_image_positions(model):
    cfg = model.config
    vision = preprocess_image(bright_square_image())
    sequence = _sequence(cfg, 24)
    queries, layers, block = [29, 30, 31], [0, 2], 3
    maps = answer_attention(model, sequence, vision, queries, layers, vision_block=block)

    names = [f"text.layers.{i}.attn.probs" for i in range(cfg.text.num_layers)]
    names.append(f"visual.blocks.{block}.attn.probs")
    with torch.inference_mode(), model.taps(read=names) as taps:  # every map in full, the plain way
        model(sequence, **vision)
    full = torch.stack([taps.cache[f"text.layers.{i}.attn.probs"][0] for i in layers])  # (L, H, T, T)
    expected_rows = full[:, :, queries].mean(dim=(0, 1))  # mean over layers and query heads -> (n, T)
    image_positions = (sequence[0] == cfg.image_token_id).nonzero().flatten()
    # fp32 sums of ~30 probabilities: rounding stays within a few ulps of 1
    torch.testing.assert_close(maps.rows.sum(-1), torch.ones(3), rtol=0, atol=1e-6)
    torch.testing.assert_close(maps.rows, expected_rows, rtol=0, atol=1e-7)  # the same numbers, reduced
    torch.testing.assert_close(maps.image_share, expected_rows[:, image_positions].sum(-1), rtol=0, atol=1e-6)
    per_layer = full[:, :, queries][..., image_positions].sum(-1).mean(1)  # (L, n)
    torch.testing.assert_close(maps.image_share_per_layer, per_layer, rtol=0, atol=1e-6)
    assert maps.image.shape == (3, 24) and 0 < float(maps.image_share.min()) < 1

    dense = taps.cache[names[-1]].dense(96)  # (heads, N, N), zero across segments
    torch.testing.assert_close(maps.received, dense.mean(0).mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(maps.received.sum(), torch.tensor(1.0), rtol=0, atol=1e-5)


def _brightness(cell: int) -> np.ndarray:
    """Mean brightness of each cell x cell square of the test image, row-major: straight from its pixels."""
    pixels = np.asarray(bright_square_image(), dtype=np.float64).mean(-1)
    return pixels.reshape(HEIGHT // cell, cell, WIDTH // cell, cell).mean(axis=(1, 3))


def test_maps_land_on_the_bright_square(model):
    """A hand-built attention in place of the model's: every query attends to the image's tokens in
    proportion to their brightness. The maps must then peak on the bright square."""
    cfg = model.config
    vision = preprocess_image(bright_square_image())
    sequence = _sequence(cfg, 24)
    first_pad = 4  # three text tokens and <|vision_start|>
    # merged tokens are row-major over the 4 x 6 merged grid (Qwen's order): 28 x 28 px cells
    merged_weights = torch.tensor(_brightness(28).reshape(-1), dtype=torch.float32)
    merged_weights /= merged_weights.sum()

    def follow_brightness(probs: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(probs)  # (1, H, T, T)
        out[..., first_pad : first_pad + 24] = merged_weights
        return out

    # patches in pixel_values order: 2 x 2 merge blocks row-major, the 4 patches of a block row-major
    patches = _brightness(14)  # (8, 12)
    order = [
        (2 * by + iy, 2 * bx + ix) for by in range(4) for bx in range(6) for iy in (0, 1) for ix in (0, 1)
    ]
    patch_weights = torch.tensor([patches[r, c] for r, c in order], dtype=torch.float32)
    patch_weights /= patch_weights.sum()

    def follow_brightness_vision(maps: SegmentMaps) -> SegmentMaps:
        probs = []
        for group, index in zip(maps.probs, maps.token_index):  # (S, H, L, L), keys indexed by row
            probs.append(patch_weights[index][:, None, None, :].expand_as(group).clone())
        return SegmentMaps(probs, maps.token_index)

    block = cfg.vision.depth - 1
    replace = {"text.layers.1.attn.probs": follow_brightness}
    replace[f"visual.blocks.{block}.attn.probs"] = follow_brightness_vision
    maps = answer_attention(model, sequence, vision, [29], [1], vision_block=block, replace=replace)

    grid = merged_to_patch_grid(maps.image[0], (8, 12))
    hottest = np.argwhere(grid == grid.max())
    assert {tuple(x) for x in hottest} == {(r, c) for r in (2, 3) for c in (6, 7)}  # the square's patches
    assert int(maps.image[0].argmax()) == SQUARE[0] * 6 + SQUARE[1]
    if cfg.vision.family == "qwen2_vl" or block in cfg.vision.fullatt_block_indexes:
        received = maps.received  # one segment: the whole image
        hottest_rows = {order[i] for i in torch.nonzero(received == received.max()).flatten().tolist()}
        assert hottest_rows == {(r, c) for r in (2, 3) for c in (6, 7)}

    # in the picture, the square is drawn in the top colour of the scale, the rest in the bottom one
    frame = frames_from_patches(vision["pixel_values"], (1, 8, 12))[0]
    picture = draw_scaled_heatmap(frame, grid, vmin=float(grid.min()), vmax=float(grid.max()), caption=["x"])
    pixels = np.asarray(picture).astype(int)
    scale = max(1, min(4, round(640 / WIDTH)))  # small inputs are upscaled to ~640 px
    top = pixels[1, WIDTH * scale + 17]  # the colour bar's top: the scale's maximum
    bottom = pixels[HEIGHT * scale - 2, WIDTH * scale + 17]
    inside = pixels[int(2.5 * 14 * scale), int(6.5 * 14 * scale)]
    outside = pixels[int(6.5 * 14 * scale), int(1.5 * 14 * scale)]
    alpha = 0.65  # heat over the picture: white square under the hottest colour, black under the coldest
    np.testing.assert_allclose(inside, (1 - alpha) * 255 + alpha * top, atol=1.5)
    np.testing.assert_allclose(outside, alpha * bottom, atol=1.5)


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-random-qwen2.5-vl")
    make_user_dir(directory, "qwen2_5_vl", seed=4)
    return directory


def test_attend_writes_pngs_with_colour_bars_and_the_numbers(user_dir, tmp_path, capsys):
    image = tmp_path / "square.png"
    bright_square_image().save(image)
    out = tmp_path / "maps"
    argv = ["attend", "--model", str(user_dir), "--image", str(image), "--prompt", "Describe this image."]
    argv += ["--out", str(out), "--answer", "This image", "--layers", "last2", "--answer-tokens", "2"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "image share" in stdout
    record = json.loads((out / "attend.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == [
        "attend.json",
        "token_00.png",
        "token_01.png",
        "vision_block_3.png",
    ]

    processor = Processor.from_pretrained(user_dir)
    answer = processor.tokenizer.encode("This image", add_special_tokens=False).ids
    assert record["answer_ids"] == answer and record["answer_given"] is True
    assert record["layers"] == [1, 2] and record["grid_thw"] == [1, 8, 12] and len(record["tokens"]) == 2

    # the shares, recomputed from the full maps of a teacher-forced forward of the same sequence
    model = QwenVL.from_pretrained(user_dir)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}
    ]
    batch = processor(text=processor.apply_chat_template(messages), images=[str(image)])
    prompt = batch["input_ids"]
    assert record["prompt_tokens"] == prompt.shape[1]
    sequence = torch.cat([prompt, torch.tensor([answer])], dim=1)
    names = ["text.layers.1.attn.probs", "text.layers.2.attn.probs"]
    with torch.inference_mode(), model.taps(read=names) as taps:
        model(sequence, pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])
    image_keys = sequence[0] == model.config.image_token_id
    for j, token in enumerate(record["tokens"]):
        query = prompt.shape[1] - 1 + j
        assert token["query_position"] == query and token["id"] == answer[j]
        shares = [float(taps.cache[n][0, :, query][:, image_keys].sum(-1).mean()) for n in names]
        assert token["image_share_per_layer"] == pytest.approx(shares, abs=1e-6)
        assert token["image_share"] == pytest.approx(sum(shares) / 2, abs=1e-6)
        assert 0 < token["min"] <= token["max"] < token["image_share"]

    scale = max(1, min(4, round(640 / WIDTH)))  # small inputs are upscaled to ~640 px
    with Image.open(out / "token_00.png") as picture:
        assert picture.width >= WIDTH * scale + COLORBAR_WIDTH
        assert picture.height == HEIGHT * scale + 8 + 18 * 4  # four caption lines of 18 px
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    bar = pixels[: HEIGHT * scale, WIDTH * scale + 17]  # the colour bar, top to bottom
    brightness = bar.sum(-1)
    assert brightness[0] > 600 and brightness[-1] < 20  # near-white at the max, near-black at the min
    assert (np.diff(brightness) <= 3).all()  # darker all the way down (rounding aside)
    with Image.open(out / "vision_block_3.png") as picture:
        assert picture.height == HEIGHT * scale + 8 + 18 * 3
    umask = current_umask()
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o666 & ~umask}
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert record["vision"]["sum"] == pytest.approx(1.0, abs=1e-5)
    assert record["vision"]["patches"] == 96 and record["vision"]["full_attention"] is True


def test_attend_errors_are_one_line(user_dir, tmp_path, capsys):
    image = tmp_path / "square.png"
    bright_square_image().save(image)
    base = ["attend", "--model", str(user_dir), "--prompt", "Hi", "--out", str(tmp_path / "o")]
    for extra, message in [
        (["--image", str(tmp_path / "missing.png")], "image file not found"),
        (["--image", str(tmp_path / "clip.mp4")], "image file not found"),
        (["--image", str(image), "--layers", "7"], "outside 0..2"),
        (["--image", str(image), "--layers", "x-y"], "is not a layer list"),
        (["--image", str(image), "--vision-block", "9"], "--vision-block 9 is outside 0..3"),
    ]:
        assert main(base + extra) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    (tmp_path / "clip.mp4").write_bytes(b"")
    assert main([*base, "--image", str(tmp_path / "clip.mp4")]) == 1
    assert "attend maps onto one image" in capsys.readouterr().err
