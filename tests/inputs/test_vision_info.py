"""`prepare_vision`: message parsing, sources (URLs from a local server, file://, data:), option errors, and
the hand-over to the prompt builder, `Processor` and the model. Pixel parity with qwen-vl-utils itself is
tests/inputs/test_qwen_vl_utils_parity.py."""

from __future__ import annotations

import base64
import http.server
import io
import sys
import threading

import av
import numpy as np
import pytest
import torch
from hf_user_dir import train_tokenizer
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from qwenvl_min import Processor, prepare_vision
from qwenvl_min.inputs.media_sources import FetchLimits
from qwenvl_min.inputs.prompts import IMAGE_PAD, VIDEO_PAD, chat_text, encode_chat
from qwenvl_min.inputs.qwen_vl_rules import fit_size


def _noise(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _png(h=60, w=90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_noise(h, w)).save(buffer, format="PNG")
    return buffer.getvalue()


def _clip(path, frames=12, fps=6, h=48, w=64):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width, stream.pix_fmt = h, w, "yuv420p"
        for k in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(_noise(h, w, seed=k), format="rgb24")))
        container.mux(stream.encode())
    return path


def _one(item, **kwargs):
    return prepare_vision([{"role": "user", "content": [item]}], **kwargs)


@pytest.fixture
def server(tmp_path):
    """An http.server on 127.0.0.1 serving tmp_path; /nolength/NAME answers without Content-Length, and
    /lies/NAME states a length of 10 bytes."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):  # keep the test output clean
            pass

        def do_GET(self):
            for prefix in ("/nolength/", "/lies/"):
                if self.path.startswith(prefix):
                    body = (tmp_path / self.path[len(prefix) :]).read_bytes()
                    self.send_response(200)
                    if prefix == "/lies/":
                        self.send_header("Content-Length", "10")
                    self.end_headers()
                    self.wfile.write(body)
                    return
            super().do_GET()

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            # the size-cap tests hang up mid-body on purpose: a reset connection is expected, not an error
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# ---- sources ------------------------------------------------------------------------------------------------


def test_image_url_and_file_and_data_uri_agree(server, tmp_path):
    (tmp_path / "cat.png").write_bytes(_png())
    data = "data:image/png;base64," + base64.b64encode(_png()).decode()
    sources = [
        {"type": "image", "image": f"{server}/cat.png"},
        {"type": "image_url", "image_url": f"{server}/cat.png"},
        {"type": "image_url", "image_url": {"url": f"{server}/cat.png"}},
        {"type": "image", "image": str(tmp_path / "cat.png")},
        {"type": "image", "image": f"file://{tmp_path / 'cat.png'}"},
        {"image": data},  # no type: the payload key decides, as in Qwen's chat template
        {"type": "image", "image": Image.open(tmp_path / "cat.png")},
    ]
    vision = prepare_vision([{"role": "user", "content": sources}])
    first = np.asarray(vision.images[0])
    assert len(vision.images) == len(sources)
    assert all(np.array_equal(np.asarray(im), first) for im in vision.images)


def test_video_url_is_downloaded_and_removed(server, tmp_path, monkeypatch):
    _clip(tmp_path / "clip.mp4")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    from_url = _one({"type": "video", "video": f"{server}/clip.mp4"}).videos[0]
    from_file = _one({"type": "video", "video": str(tmp_path / "clip.mp4")}).videos[0]
    assert np.array_equal(from_url.frames, from_file.frames) and from_url.sample_fps == from_file.sample_fps
    assert list(scratch.iterdir()) == []  # the download is gone


def test_download_cap_is_checked_before_reading(server, tmp_path):
    (tmp_path / "big.png").write_bytes(_png(400, 400))
    limits = FetchLimits(max_bytes=1000)
    with pytest.raises(ValueError, match=r"big.png is \d+ bytes, over the download limit of 1000"):
        _one({"type": "image", "image": f"{server}/big.png"}, fetch=limits)
    with pytest.raises(ValueError, match="over the download limit of 1000 bytes"):  # no length stated
        _one({"type": "image", "image": f"{server}/nolength/big.png"}, fetch=limits)


def test_offline_and_missing_urls_say_to_download(server):
    with pytest.raises(
        ValueError, match=r"could not fetch http://127\.0\.0\.1:9/x\.png .*download it and pass a local path"
    ):
        _one({"type": "image", "image": "http://127.0.0.1:9/x.png"}, fetch=FetchLimits(timeout_s=5))
    with pytest.raises(ValueError, match=r"could not fetch .*/missing\.png \(HTTP 404"):
        _one({"type": "image", "image": f"{server}/missing.png"})


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ({"type": "image", "image": "data:image/png,abc"}, "must be base64"),
        ({"type": "image", "image": "data:image/png;base64,@@@"}, "not valid base64"),
        ({"type": "image", "image": "data:text/plain;base64,aGk="}, "data:image"),
        ({"type": "video", "video": "data:video/mp4;base64,AAAA"}, "images only"),
        ({"type": "image", "image": "/no/such.png"}, "image file not found"),
        ({"type": "video", "video": "/no/such.mp4"}, "video file not found"),
        ({"type": "image", "image": 42}, "must be a PIL image"),
        ({"type": "video", "video": np.zeros((2, 28, 28, 3), np.uint8)}, r"pass list\(array\)"),
    ],
)
def test_bad_sources(item, match):
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=match):
        _one(item)


# ---- options ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "match"),
    [
        (
            {"type": "image", "image": "x.png", "max_pixel": 5},
            r"unknown option\(s\) \['max_pixel'\] for an image",
        ),
        (
            {"type": "video", "video": "x.mp4", "sample_fps": 2},
            r"unknown option\(s\) \['sample_fps'\] for a video file",
        ),
        (
            {"type": "video", "video": [np.zeros((28, 28, 3), np.uint8)], "fps": 2},
            "fps, nframes, ... apply to video files",
        ),
        ({"type": "video", "video": "x.mp4", "fps": 2, "nframes": 4}, "either fps .* or nframes"),
        (
            {"type": "video", "video": "x.mp4", "nframes": 4, "max_frames": 8},
            "with nframes they would be ignored",
        ),
        (
            {"type": "image", "image": "x.png", "resized_height": 56},
            "resized_height and resized_width together",
        ),
        (
            {"type": "image", "image": "x.png", "resized_height": 56, "resized_width": 56, "max_pixels": 9},
            "would be ignored",
        ),
        ({"type": "image_url", "image_url": {"url": "x.png", "detail": "high"}}, r"\{'url': URL\}"),
        ({"type": "image"}, "needs an 'image' or 'image_url' payload"),
        ({"type": "video"}, "needs a 'video' payload"),
    ],
)
def test_option_errors(item, match):
    with pytest.raises(ValueError, match=match):
        _one(item)


def test_max_pixels_below_the_default_minimum_lowers_it(tmp_path):
    """qwen-vl-utils asserts min <= max here; a smaller max alone is a request for small frames."""
    image = _one({"type": "image", "image": Image.fromarray(_noise(300, 300)), "max_pixels": 2000}).images[0]
    assert (image.height, image.width) == fit_size(300, 300, 28, 2000, 2000) == (28, 28)
    video = _one({"type": "video", "video": str(_clip(tmp_path / "c.mp4")), "max_pixels": 20000}).videos[0]
    assert video.frames.shape[1:3] == fit_size(48, 64, 28, 20000, 20000)
    with pytest.raises(ValueError, match="must not exceed max_pixels"):
        _one(
            {
                "type": "image",
                "image": Image.fromarray(_noise(30, 30)),
                "min_pixels": 5000,
                "max_pixels": 4000,
            }
        )


def test_token_budget_is_checked_before_decoding(tmp_path):
    path = str(_clip(tmp_path / "c.mp4"))
    with pytest.raises(ValueError, match="over the budget of 100.*--fps / --num-frames"):
        _one({"type": "video", "video": path}, max_tokens=100)
    with pytest.raises(ValueError, match=r"after \d+ tokens of earlier items"):
        prepare_vision(
            [{"role": "user", "content": [{"type": "video", "video": path}] * 2}],
            max_tokens=300,  # one video: 4 frames of 128+ tokens = 2 x 130 merged tokens
        )


# ---- hand-over ----------------------------------------------------------------------------------------------


def _messages(tmp_path):
    return [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.fromarray(_noise(100, 150)), "max_pixels": 30 * 784},
                {"type": "video", "video": str(_clip(tmp_path / "c.mp4")), "nframes": 4},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64," + base64.b64encode(_png()).decode()},
                },
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]


def test_model_inputs_equal_hf_processor_on_the_prepared_images(tmp_path):
    """What HF's image processor makes of the prepared (already resized) images, with the published
    checkpoints' budget (max_pixels 12845056): the same rows and grids, nothing resized again."""
    messages = _messages(tmp_path)
    vision = prepare_vision(messages)
    hf = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056)(
        list(vision.images), return_tensors="pt"
    )
    inputs = vision.model_inputs()
    torch.testing.assert_close(inputs["pixel_values"], hf["pixel_values"], rtol=0, atol=0)
    assert torch.equal(inputs["image_grid_thw"], hf["image_grid_thw"])
    video = vision.videos[0]
    assert inputs["video_grid_thw"].tolist() == [
        [2, video.frames.shape[1] // 14, video.frames.shape[2] // 14]
    ]
    assert inputs["second_per_grid_ts"].tolist() == [pytest.approx(2 / video.sample_fps)]
    assert video.sample_fps == 4 / 12 * 6 and video.frame_indices == (0, 4, 7, 11)  # linspace(0, 11, 4)


def test_processor_and_encode_chat_take_prepared_vision(tmp_path):
    messages = _messages(tmp_path)
    vision = prepare_vision(messages)
    tokenizer = train_tokenizer()
    processor = Processor(tokenizer)  # the library's image budget (1280 tokens) would shrink nothing here
    batch = processor(text=processor.apply_chat_template(messages), vision=vision)
    inputs = vision.model_inputs()
    assert all(torch.equal(batch[k], inputs[k]) for k in inputs)
    ids = encode_chat(tokenizer, messages, vision=vision)
    assert torch.equal(ids["input_ids"], batch["input_ids"])
    pads = {IMAGE_PAD: tokenizer.token_to_id(IMAGE_PAD), VIDEO_PAD: tokenizer.token_to_id(VIDEO_PAD)}
    image_tokens = int(vision.image_grid_thw.prod(-1).sum()) // 4
    video_tokens = int(vision.video_grid_thw.prod(-1).sum()) // 4
    assert int((ids["input_ids"] == pads[IMAGE_PAD]).sum()) == image_tokens
    assert int((ids["input_ids"] == pads[VIDEO_PAD]).sum()) == video_tokens
    with pytest.raises(ValueError, match="not both"):
        processor(text="x", vision=vision, images=[vision.images[0]])


def test_an_image_bigger_than_the_processor_budget_is_not_resized_again():
    """qwen-vl-utils' default allows 16384 tokens an image; a processor without a checkpoint allows
    1280. The prepared image is used as it is (as HF's processor would, given the checkpoint's budget)."""
    vision = _one({"type": "image", "image": Image.fromarray(_noise(1400, 1400))})
    assert vision.image_grid_thw.tolist() == [[1, 100, 100]]  # 1400 = 50 * 28: kept
    batch = Processor(train_tokenizer())(
        text=chat_text([{"role": "user", "content": [{"type": "image"}]}]), vision=vision
    )
    assert batch["image_grid_thw"].tolist() == [[1, 100, 100]]


def test_batch_of_conversations_keeps_order(tmp_path):
    a = {"type": "image", "image": Image.fromarray(_noise(56, 56))}
    b = {"type": "image", "image": Image.fromarray(_noise(112, 56))}
    vision = prepare_vision([[{"role": "user", "content": [a]}], [{"role": "user", "content": [b, a]}]])
    assert vision.image_grid_thw.tolist() == [[1, 4, 4], [1, 8, 4], [1, 4, 4]]


def test_readme_tour_messages_in_answer_out(tmp_path):
    """The README's tour on a tiny random checkpoint in the HF layout (its Jinja chat template included):
    messages with an image path, an image_url and a video -> prepare_vision -> Processor -> generate."""
    from hf_user_dir import make_user_dir

    from qwenvl_min import QwenVL
    from qwenvl_min.generate import generate

    directory = tmp_path / "ckpt"
    make_user_dir(directory, "qwen2_5_vl")
    model = QwenVL.from_pretrained(directory)
    processor = Processor.from_pretrained(directory)
    (tmp_path / "cat.png").write_bytes(_png(56, 84))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(tmp_path / "cat.png")},
                {"type": "image_url", "image_url": {"url": f"file://{tmp_path / 'cat.png'}"}},
                {
                    "type": "video",
                    "video": str(_clip(tmp_path / "c.mp4")),
                    "nframes": 4,
                    "max_pixels": 56 * 56,
                },
                {"type": "text", "text": "What happens in the video?"},
            ],
        }
    ]
    vision = prepare_vision(messages)
    text = processor.apply_chat_template(messages)
    assert text.count("<|image_pad|>") == 2 and text.count("<|video_pad|>") == 1
    batch = processor(text=text, vision=vision)
    # 4 of 12 frames at 6 fps: sampled at 2 fps, 2 frames per temporal patch -> 1 s
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4]] and batch["second_per_grid_ts"].tolist() == [1.0]
    answer = generate(model, **batch, max_new_tokens=3, temperature=0)
    assert answer.shape[0] == 1 and 1 <= answer.shape[1] <= 3
    assert isinstance(processor.tokenizer.decode(answer[0].tolist(), skip_special_tokens=True), str)


def test_a_wrong_frame_count_is_decoded_again_and_charged_once(tmp_path, monkeypatch):
    """A header that overstates the frames: chosen again from the decoded count, and the token budget is
    charged for the second choice only."""
    import dataclasses

    from qwenvl_min.inputs import vision_messages

    path = str(_clip(tmp_path / "c.mp4", frames=12, fps=6))
    real = vision_messages.probe
    monkeypatch.setattr(vision_messages, "probe", lambda p: dataclasses.replace(real(p), frames=20))
    item = {"type": "video", "video": path, "nframes": 4, "max_pixels": 56 * 56}
    video = _one(item, max_tokens=8).videos[0]  # 2 x 4 x 4 patches / 4 = 8 tokens: exactly the budget
    assert video.frame_indices == (0, 4, 7, 11) and video.total_frames == 12  # linspace(0, 11, 4)
