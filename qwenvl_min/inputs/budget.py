"""The resource budget of preprocessing, checked before pixels are decoded or allocated.

An input's cost is known from its header alone: `smart_resize` of the stated size gives the patch grid,
the frame count gives the temporal patches, and vision tokens = t·h·w / merge². Memory follows from
it (each token is merge² rows of 1176 fp32 values, ~18.8 KB), so one limit bounds both:
`max_tokens` (CLI `--max-vision-tokens`, default DEFAULT_MAX_VISION_TOKENS ≈ 0.6 GB of pixel rows).
Decoding is bounded separately by PIL's decompression-bomb limit on the *source* size
(`PIL.Image.MAX_IMAGE_PIXELS`, which applies to video frames too).
"""

from __future__ import annotations

from PIL import Image

from ..utils.validate import positive_int

DEFAULT_MAX_VISION_TOKENS = 32768


def check_pixel_budget(min_pixels: object, max_pixels: object, max_tokens: object) -> int:
    """Validates the three knobs (whole numbers >= 1, min <= max); returns max_tokens as an int."""
    low = positive_int("min_pixels", min_pixels, hint="--min-pixels")
    high = positive_int("max_pixels", max_pixels, hint="--max-pixels")
    if low > high:
        raise ValueError(
            f"min_pixels ({low}) must not exceed max_pixels ({high}); lower min_pixels or raise max_pixels"
        )
    return positive_int("max_tokens", max_tokens, hint="--max-vision-tokens")


def check_source_size(what: str, width: int, height: int, frames: int = 1) -> None:
    """Refuse to decode a source larger than PIL's decompression-bomb limit (per frame)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ValueError(
            f"{what} is {width}x{height} = {width * height} px, over the decoding limit of {int(limit)} px "
            "(a decompression bomb?); if it is genuine, raise PIL.Image.MAX_IMAGE_PIXELS"
        )


def check_tokens(
    what: str, grid_t: int, grid_h: int, grid_w: int, merge_size: int, max_tokens: int, video: bool
) -> None:
    """Raise before allocation if t·h·w/merge² vision tokens exceed max_tokens; names the knobs."""
    tokens = grid_t * grid_h * grid_w // merge_size**2
    if tokens <= max_tokens:
        return
    fewer_frames = (
        " or sample fewer frames (--fps / --num-frames / --max-frames / --total-pixels; in a message fps / "
        "nframes / max_frames / total_pixels; preprocess_video: sample_fps= / num_frames=)"
        if video
        else ""
    )
    raise ValueError(
        f"{what} would be {tokens} vision tokens (grid {grid_t}x{grid_h}x{grid_w} patches, "
        f"~{tokens * merge_size**2 * 1176 * 4 / 2**30:.1f} GiB of pixel rows), over the budget of {max_tokens}: "
        f"lower --max-pixels (max_pixels=){fewer_frames}, or raise --max-vision-tokens (max_tokens=)"
    )
