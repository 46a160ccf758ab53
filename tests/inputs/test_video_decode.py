"""Video decoding (`qwenvl_min.inputs.video_decode`): the kept frames are the right ones, they alone are converted,
frames before the first kept one are skipped by seeking, and the file is decoded once unless its stated
frame count was wrong. Decoded frames are counted through the progress bar hook; file opens through av.open.
"""

from __future__ import annotations

import dataclasses
import logging

import av
import numpy as np
import pytest

from qwenvl_min.inputs import video_decode
from qwenvl_min.inputs.video_decode import probe, read_frames, read_sampled


def _write(path, frames=60, fps=30, gop=10, h=48, w=64):
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width, stream.pix_fmt = h, w, "yuv420p"
        stream.codec_context.gop_size = gop  # a keyframe every `gop` frames: something to seek to
        for _ in range(frames):
            picture = np.kron(
                rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8)
            )
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


def _all_frames(path):
    with av.open(path) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _keyframes(path):
    """Frame numbers of the keyframes (the encoder adds some at scene cuts), from the packets alone."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        return [
            round(float(p.pts * stream.time_base) * 30)
            for p in container.demux(stream)
            if p.is_keyframe and p.pts is not None
        ]


@pytest.fixture
def counted(monkeypatch):
    """Counts decoded frames (bar updates), transforms (conversions kept) and av.open calls."""
    counts = {"decoded": 0, "opens": 0, "transforms": 0}

    class Bar:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

        def update(self, n):
            counts["decoded"] += n

    real_open = av.open

    def counting_open(*args, **kwargs):
        counts["opens"] += 1
        return real_open(*args, **kwargs)

    monkeypatch.setattr(video_decode, "progress_bar", Bar)
    monkeypatch.setattr(av, "open", counting_open)

    def transform(frame):
        counts["transforms"] += 1
        return frame

    counts["transform"] = transform
    return counts


def test_kept_frames_are_the_right_ones(tmp_path, counted):
    path = _write(tmp_path / "a.mp4")
    reference = _all_frames(path)
    header = probe(path)
    assert (header.frames, header.fps, header.counted_by) == (60, 30.0, "stream")
    for indices in ([0, 14, 29, 44, 59], [25, 26, 40], [37], list(range(60))):
        frames, count = read_frames(header, indices, counted["transform"])
        assert count == 60
        assert all(np.array_equal(a, reference[i]) for a, i in zip(frames, indices, strict=True))


def test_only_kept_frames_are_converted_and_the_prefix_is_skipped(tmp_path, counted):
    path = _write(tmp_path / "a.mp4", frames=60, gop=10)
    header = probe(path)
    counted.update(decoded=0, transforms=0)
    frames, count = read_frames(header, [45, 50, 55], counted["transform"], stop_after=55)
    assert counted["transforms"] == 3 and len(frames) == 3
    # decoding starts at the keyframe at or before frame 45 and stops at 55 (so the count is not known)
    keyframe = max(k for k in _keyframes(path) if k <= 45)
    assert counted["decoded"] == 55 - keyframe + 1 < 46 and count is None
    assert np.array_equal(frames[0], _all_frames(path)[45])


def test_one_pass_when_the_header_is_right(tmp_path, counted):
    path = _write(tmp_path / "a.mp4", frames=40)
    header = probe(path)
    counted.update(opens=0, decoded=0)
    frames, indices, total = read_sampled(
        header, lambda total: ([0, total // 2, total - 1], None), lambda n: counted["transform"]
    )
    assert counted["opens"] == 1 and counted["decoded"] == 40 and total == 40 and indices == [0, 20, 39]


def test_count_from_the_duration_when_the_container_states_none(tmp_path, counted):
    """Matroska states no frame count: round(duration * fps), verified by decoding to the end."""
    path = _write(tmp_path / "a.mkv", frames=37, fps=24)
    header = probe(path)
    assert header.counted_by == "duration" and header.frames == 37
    counted.update(opens=0)
    _, _, total = read_sampled(header, lambda total: ([0, total - 1], None), lambda n: counted["transform"])
    assert total == 37 and counted["opens"] == 1


def test_a_wrong_count_is_corrected_with_a_second_pass(tmp_path, counted, caplog):
    path = _write(tmp_path / "a.mp4", frames=30)
    wrong = dataclasses.replace(probe(path), frames=36)  # as a container with a bad index would say
    chosen = []

    def choose(total):
        chosen.append(total)
        return [0, total - 1], None

    counted.update(opens=0)
    with caplog.at_level(logging.INFO, logger="qwenvl_min.inputs.video_decode"):
        frames, indices, total = read_sampled(wrong, choose, lambda n: counted["transform"])
    assert chosen == [36, 30] and total == 30 and indices == [0, 29] and counted["opens"] == 2
    assert np.array_equal(frames[1], _all_frames(path)[29])
    assert "says 36 frames, 30 were decoded" in caplog.text


def test_damaged_files(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("not a video")
    with pytest.raises(ValueError, match="not a video, or corrupt"):
        probe(path)
    with pytest.raises(ValueError, match="ascending"):
        read_frames(probe(_write(tmp_path / "a.mp4", frames=8)), [3, 3], lambda f: f)


def test_a_seek_past_the_target_is_retried_from_the_start(tmp_path, counted, monkeypatch):
    """A container whose index sends the seek too far: the frame numbers say so, and decoding restarts."""
    path = _write(tmp_path / "a.mp4", frames=40)
    real_seek = video_decode._seek

    def bad_seek(container, stream, header, target):
        number = real_seek(container, stream, header, target)
        return (lambda frame: number(frame) + 5) if target else number  # lands 5 frames late

    monkeypatch.setattr(video_decode, "_seek", bad_seek)
    frames, count = read_frames(probe(path), [20, 30], counted["transform"])
    reference = _all_frames(path)
    assert (
        count == 40 and np.array_equal(frames[0], reference[20]) and np.array_equal(frames[1], reference[30])
    )
