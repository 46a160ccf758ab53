"""The CLI with Qwen3-VL: `run` answers from a user's tiny Qwen3-VL (and -MoE) HF directory with the
checkpoint's chat template, processor settings and, for videos, the timestamped frames (the same tokens as
the library calls); `latents` reads DeepStack and decoder taps from it, images and videos; `inspect
--family qwen3-vl` reports patch-16 geometry; `attend` draws Qwen3-VL maps; `convert` round-trips it."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from hf_user_dir import make_user_dir
from PIL import Image
from safetensors import safe_open

from qwenvl_min import QwenVL, prepare_vision
from qwenvl_min.cli.main import main
from qwenvl_min.generate import generate
from qwenvl_min.inputs.processor import Processor


@pytest.fixture(scope="module")
def user_dirs(tmp_path_factory):
    out = {}
    for family in ("qwen3_vl", "qwen3_vl_moe"):
        directory = tmp_path_factory.mktemp(family)
        make_user_dir(directory, family, seed=8)  # seed 8: both answer with a few tokens before a stop
        out[family] = directory
    return out


def _image(path, w=96, h=64, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _video(path, frames=9, fps=4, h=64, w=96):
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width, stream.pix_fmt = h, w, "yuv420p"
        for _ in range(frames):
            picture = np.kron(
                rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8)
            )
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())
    return path


def _expected_answer(directory, item: dict, prompt: str) -> str:
    """The library path the CLI follows: qwen-vl-utils-style preparation (patch 16), the processor."""
    processor = Processor.from_pretrained(directory)
    model = QwenVL.from_pretrained(directory)
    messages = [{"role": "user", "content": [item, {"type": "text", "text": prompt}]}]
    vision = prepare_vision(messages, patch_size=16) if item["type"] == "video" else None
    if vision is None:
        batch = processor(text=processor.apply_chat_template(messages), images=[item["image"]])
    else:
        batch = processor(text=processor.apply_chat_template(messages), vision=vision)
    new = generate(model, **batch, max_new_tokens=6)[0].tolist()
    stops = set(model.generation_settings.stop_token_ids)
    kept = []
    for token in new:
        if token in stops:
            break
        kept.append(token)
    return processor.tokenizer.decode(kept)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe"])
def test_run_answers_from_a_qwen3_directory(user_dirs, tmp_path, capsys, family):
    directory = user_dirs[family]
    image = _image(tmp_path / "a.png")
    argv = ["run", "--model", str(directory), "--image", str(image), "--prompt", "Describe it."]
    assert main([*argv, "--max-new-tokens", "6"]) == 0
    answer = capsys.readouterr().out
    assert answer.strip()
    assert answer.rstrip("\n") == _expected_answer(
        directory, {"type": "image", "image": str(image)}, "Describe it."
    )


def test_run_with_a_video_puts_timestamps_in_the_prompt(user_dirs, tmp_path, capsys):
    directory = user_dirs["qwen3_vl"]
    video = _video(tmp_path / "clip.mp4")
    argv = ["run", "--model", str(directory), "--video", str(video), "--prompt", "What happens?"]
    assert main([*argv, "--max-new-tokens", "6"]) == 0
    answer = capsys.readouterr().out
    assert answer.rstrip("\n") == _expected_answer(
        directory, {"type": "video", "video": str(video)}, "What happens?"
    )


def test_latents_reads_deepstack_and_decoder_taps(user_dirs, tmp_path):
    directory = user_dirs["qwen3_vl"]
    image, video = _image(tmp_path / "a.png"), _video(tmp_path / "b.mp4")
    out = tmp_path / "out"
    taps = "visual.deepstack_mergers.0,text.layers.0,text.layers.0.deepstack.input"
    argv = ["latents", "--model", str(directory), "--taps", taps, "--out", str(out), str(image), str(video)]
    assert main([*argv, "--no-progress"]) == 0
    for name in ("a", "b"):
        with safe_open(str(out / f"{name}.safetensors"), framework="pt") as f:
            merged = f.get_tensor("visual.deepstack_mergers.0")
            after, before = f.get_tensor("text.layers.0"), f.get_tensor("text.layers.0.deepstack.input")
            assert merged.shape[-1] == 64 and not torch.equal(after, before)  # DeepStack level 0 was added


def test_latents_with_a_prompt_sees_the_processor_tokens_and_records_timestamps(user_dirs, tmp_path):
    """`latents --prompt` on a Qwen3-VL video: the ids the model saw are the processor's (timestamped
    per-frame blocks from the chat template), the tap is the library forward over that batch, and the
    metadata carries the timestamps in place of second_per_grid_ts."""
    directory = user_dirs["qwen3_vl"]
    video = _video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    argv = ["latents", "--model", str(directory), "--taps", "text.layers.1", "--out", str(out), str(video)]
    assert main([*argv, "--prompt", "What happens?", "--no-progress"]) == 0
    item = {"type": "video", "video": str(video)}
    messages = [{"role": "user", "content": [item, {"type": "text", "text": "What happens?"}]}]
    processor = Processor.from_pretrained(directory)
    vision = prepare_vision(messages, patch_size=16)
    batch = processor(text=processor.apply_chat_template(messages), vision=vision)
    assert "second_per_grid_ts" not in batch
    with safe_open(str(out / "clip.safetensors"), framework="pt") as f:
        meta, got = f.metadata(), f.get_tensor("text.layers.1")
    assert json.loads(meta["input_ids"]) == batch["input_ids"][0].tolist()
    timing = json.loads(meta["video"])
    assert timing["second_per_grid_ts"] is None
    assert timing["timestamps"] == pytest.approx(vision.video_timestamps()[0])
    model = QwenVL.from_pretrained(directory)
    with torch.no_grad(), model.taps(read=["text.layers.1"]) as taps:
        model(**batch)
    want = taps.cache["text.layers.1"]  # (1, T, E): latents keeps the batch axis
    assert got.shape == want.shape
    # the same forward over the same inputs, one input per pack: equal up to the dtype's rounding
    assert torch.allclose(got.float(), want.float(), rtol=0, atol=1e-5 * float(want.abs().max()))


def test_inspect_reports_patch_16_geometry(tmp_path, capsys):
    image = _image(tmp_path / "photo.png", w=640, h=480)
    argv = ["inspect", str(image), "--family", "qwen3-vl", "--json", "--png", str(tmp_path / "t.png")]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    # published budget 65536 .. 16777216 px, factor 32: 640x480 stays, 40 x 30 patches of 16 px
    assert report["grid_thw"] == [1, 30, 40] and report["values_per_patch"] == 1536
    assert report["merged_tokens"] == 300 and "Qwen3-VL" in report["windows"]
    video = _video(tmp_path / "v.mp4")
    argv = ["inspect", str(video), "--family", "qwen3-vl", "--json", "--png", str(tmp_path / "v.png")]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    t = report["grid_thw"][0]
    assert report["prompt_tokens"] == report["merged_tokens"] + 2 + 2 * t  # a block per temporal patch


def test_attend_draws_qwen3_maps(user_dirs, tmp_path):
    directory = user_dirs["qwen3_vl"]
    image = _image(tmp_path / "a.png", w=128, h=96)
    out = tmp_path / "maps"
    argv = [
        "attend",
        "--model",
        str(directory),
        "--image",
        str(image),
        "--prompt",
        "Describe it.",
        "--out",
        str(out),
    ]
    assert main([*argv, "--max-new-tokens", "3"]) == 0
    record = json.loads((out / "attend.json").read_text())
    assert record["vision"]["full_attention"] is True
    assert (out / f"vision_block_{record['vision']['block']}.png").is_file()


def test_convert_round_trip(user_dirs, tmp_path):
    directory = user_dirs["qwen3_vl_moe"]
    ours, back = tmp_path / "ours", tmp_path / "back"
    assert main(["convert", str(directory), str(ours), "--no-progress"]) == 0
    assert main(["convert", "--to-hf", str(ours), str(back), "--no-progress"]) == 0
    a, b = QwenVL.from_pretrained(directory), QwenVL.from_pretrained(back)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert QwenVL.from_pretrained(ours).config == a.config
