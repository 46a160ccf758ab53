"""Inputs that are wrong in a way no option fixes get a message saying what the input is: a picture given as a
video, a one-frame video, a processor call without a prompt, a data: URI that holds no image; and a
`PreparedVision` prints as a short summary, not as its pixel arrays."""

from __future__ import annotations

import base64

import pytest
from media_files import write_mp4
from PIL import Image
from tiny_tokenizer import word_level_tokenizer

from qwenvl_min import Config, prepare_vision
from qwenvl_min.inputs.processor import Processor
from qwenvl_min.inputs.prompts import load_tokenizer
from qwenvl_min.inputs.qwen_vl_rules import frame_count


def _video(source: str, **options) -> None:
    prepare_vision([{"role": "user", "content": [{"type": "video", "video": source, **options}]}])


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".mp4"])  # the suffix does not decide: the file does
def test_a_picture_given_as_a_video_is_named_a_still_image(tmp_path, suffix):
    pytest.importorskip("av")
    path = tmp_path / f"photo{suffix}"
    Image.new("RGB", (80, 60), (10, 200, 30)).save(path, format="JPEG")
    with pytest.raises(
        ValueError, match=r"is a still image \(jpeg_pipe\), not a video; pass it as an image$"
    ):
        _video(str(path))


@pytest.mark.parametrize("options", [{}, {"nframes": 2}, {"fps": 30.0}, {"max_frames": 2}])
def test_a_one_frame_video_says_what_no_option_can_fix(tmp_path, options):
    pytest.importorskip("av")
    path = write_mp4(tmp_path / "one.mp4", frames=1)
    with pytest.raises(
        ValueError,
        match=r"^a video needs at least 2 frames .* this one has 1 in the chosen range; pass a single picture as an image instead$",
    ):
        _video(str(path), **options)


def test_frame_counts_that_an_option_can_fix_keep_their_message():
    with pytest.raises(
        ValueError, match=r"cannot keep 0 frames of a 5-frame video .* choose another fps / nframes"
    ):
        frame_count(5, 5.0, nframes=1)
    assert frame_count(5, 5.0, nframes=2) == 2


def test_processor_text_missing_or_empty(tmp_path):
    word_level_tokenizer(tmp_path / "tokenizer.json", Config.preset("tiny-qwen2.5-vl"))
    processor = Processor(load_tokenizer(tmp_path / "tokenizer.json"))
    image = Image.new("RGB", (56, 56))
    with pytest.raises(
        ValueError,
        match=r"^text is missing: the processor needs the prompt \(e.g. text=processor.apply_chat_template",
    ):
        processor(text=None, images=[image])
    with pytest.raises(ValueError, match=r"^text is empty: give the prompt"):
        processor(text="", images=[])  # an empty image list is no images: the text is what is missing
    with pytest.raises(ValueError, match=r"^text row\(s\) \[1\] are empty"):
        processor(text=["hello", ""])
    with pytest.raises(ValueError, match=r"^text is an empty list"):
        processor(text=[])
    with pytest.raises(TypeError, match=r"^text must be a string or a list of strings"):
        processor(text=3)
    plain = processor(text="hello", images=[], videos=[])
    assert set(plain) == {"input_ids", "attention_mask", "mm_token_type_ids"}


def test_a_data_uri_without_an_image_names_the_uri():
    uri = "data:image/png;base64," + base64.b64encode(b"not a png at all").decode()
    with pytest.raises(ValueError) as err:
        prepare_vision([{"role": "user", "content": [{"type": "image", "image": uri}]}])
    assert str(err.value) == (
        "a data: URI (data:image/png;base64,...) holds no image PIL can read (PNG, JPEG, WebP, ...)"
    )


def test_prepared_vision_prints_sizes_and_counts_not_pixels(tmp_path):
    frames = [Image.new("RGB", (64, 48), (k, k, k)) for k in range(3)]
    vision = prepare_vision(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": Image.new("RGB", (300, 220))},
                    {"type": "image", "image": Image.new("RGB", (56, 56))},
                    {"type": "video", "video": frames},
                ],
            }
        ]
    )
    assert repr(vision) == (
        "PreparedVision(images: 2 [308x224, 56x56]; videos: 1 [4 frames of 392x280 at 2 fps]; patch 14, merge 2)"
    )
    assert str(vision) == repr(vision)
    assert repr(vision.videos[0]) == "SampledVideo(4 frames of 392x280 at 2 fps, from a list of 4 frames)"
