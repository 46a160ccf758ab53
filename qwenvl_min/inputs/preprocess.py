"""Image and video preprocessing for Qwen2-VL / Qwen2.5-VL: pixels in, the vision tower's inputs out.
(Qwen3-VL images go through the same image path with its patch 16 and mean / std 0.5; its videos follow
their own rules in `qwenvl_min.inputs.video_qwen3`, on the same decoding, resize and patch steps.)

Pipeline (images and videos alike):
    decode → RGB uint8 → `smart_resize` size (both sides multiples of patch·merge = 28) → PIL bicubic resize
    → rescale 1/255 → mean/std normalize (CLIP's by default) → patch rows of C·T·P·P = 3·2·14·14 = 1176 values.

Reference: transformers 5.24 `Qwen2VLImageProcessorPil` (the PIL/NumPy backend). Images match it bit for
bit. Things to know (see also docs/design.md, "Traps we found"):
- HF's *torchvision* backend resizes with antialiased bicubic on tensors and differs from the PIL backend by
  up to ~16 uint8 levels at sharp edges. torchvision cannot be installed beside the pinned CPU torch here, so
  the PIL backend is our reference, for videos too (HF's video processor exists only as a torchvision class;
  we resize every video frame exactly as the PIL image processor resizes an image).
- HF applies the EXIF orientation only to images given as *paths*, and composites transparency onto white
  only for images given as *PIL objects* (a path with alpha gets its alpha dropped). We do both for every
  input, so a file and the same file opened by hand give the same pixels.
- 16-bit greyscale (`I;16*`): PIL's `convert("RGB")`, and therefore HF, clips every value above 255 to
  white. We scale 0..65535 to 0..255 instead (round(v / 257)).
- Rescale and normalize are computed as HF does (uint8 → fp64 · (1/255) → fp32, then (x − mean) / std in
  fp32). Because the input is uint8 there are only 256 possible results per channel, so we evaluate that
  exact arithmetic once per (mean, std) into a lookup table and gather from it while writing rows in patch
  order.

Row order of `pixel_values` (shape (Σ t·h·w, 1176)): for each temporal patch, 2×2 merge blocks row-major
over the (h/2, w/2) block grid, inside a block (0,0), (0,1), (1,0), (1,1); within a row (channel, time, y, x).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..model.geometry import frames_to_rows, still_to_rows
from ..utils.validate import finite_number, positive_int
from .budget import DEFAULT_MAX_VISION_TOKENS, check_pixel_budget, check_source_size, check_tokens
from .video_decode import probe, read_sampled

PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
Normalization = tuple[float, float, float]  # per channel (R, G, B)
# (mean, std) of each processor family: "qwen2" = the Qwen2-VL / Qwen2.5-VL processors, "qwen3" = Qwen3-VL's
NORMALIZATION: dict[str, tuple[Normalization, Normalization]] = {
    "qwen2": (IMAGE_MEAN, IMAGE_STD),
    "qwen3": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
MAX_ASPECT_RATIO = 200

# Per-image pixel budget of HF's image processor class defaults.
IMAGE_MIN_PIXELS = 56 * 56
IMAGE_MAX_PIXELS = 28 * 28 * 1280
# Per-frame budget of HF's video processor class defaults: small videos are *upscaled* to >= 128 tokens/frame.
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

ImageInput = Any  # PIL.Image.Image | np.ndarray (H, W[, C]) uint8 | str | os.PathLike


def smart_resize(
    height: int,
    width: int,
    factor: int = PATCH_SIZE * MERGE_SIZE,
    min_pixels: int = IMAGE_MIN_PIXELS,
    max_pixels: int = IMAGE_MAX_PIXELS,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
    *,
    sides_at_least_factor: bool = False,
) -> tuple[int, int]:
    """Return the (height, width) an image is resized to: multiples of `factor`, about the same aspect ratio,
    and (normally) min_pixels <= height·width <= max_pixels.

    `sides_at_least_factor`: qwen-vl-utils' variant of the rule (`qwenvl_min.inputs.qwen_vl_rules.fit_size`):
    each rounded side is raised to one `factor` before the pixel budget is applied; HF lets it round to 0.

    Identical to HF's `smart_resize`: sides are rounded with Python's `round` (half to even: 70/28 = 2.5 → 2,
    so 70 → 56), too-large sizes are scaled down and floored, too-small ones scaled up and ceiled. The
    aspect-ratio test is strict and uses the raw size (ratio 200 passes, anything above raises), so a very
    thin image can still end with one side of exactly `factor`.
    """
    for name, value in (("height", height), ("width", width), ("factor", factor)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    factor = positive_int("factor", factor)
    finite_number("min_pixels", min_pixels, minimum=0)
    finite_number("max_pixels", max_pixels, positive=True)
    finite_number("max_aspect_ratio", max_aspect_ratio, positive=True)
    if min_pixels > max_pixels:
        raise ValueError(
            f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels}); lower min_pixels or raise "
            "max_pixels"
        )
    ratio = max(height, width) / min(height, width)
    if ratio > max_aspect_ratio:
        raise ValueError(
            f"aspect ratio {ratio:.1f} of a {height}x{width} (h x w) image is over the limit of "
            f"{max_aspect_ratio}; crop or pad the image first"
        )
    smallest = factor if sides_at_least_factor else 0
    h_bar = max(smallest, round(height / factor) * factor)
    w_bar = max(smallest, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if (
        h_bar == 0 or w_bar == 0
    ):  # HF returns it and fails later: a side under factor / 2 with tiny min_pixels
        raise ValueError(
            f"a {height}x{width} (h x w) image rounds to {h_bar}x{w_bar} pixels with min_pixels={min_pixels}; "
            f"raise min_pixels to at least {factor * factor} (one {factor}x{factor} block) or enlarge the image"
        )
    return h_bar, w_bar


# ---------------------------------------------------------------------------------------------- decoding


def _open_image_file(path: str | os.PathLike, decode: bool = True) -> Image.Image:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"image file not found: {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"expected an image file, got a directory: {path!r}")
    try:
        image = Image.open(path)
        check_source_size(f"image {path!r}", image.width, image.height)
        if decode:
            image.load()  # Image.open is lazy: decode now, so a truncated file fails here with its path named
    except UnidentifiedImageError:
        raise ValueError(f"{path!r} is not an image file PIL can read (PNG, JPEG, WebP, ...)") from None
    except Image.DecompressionBombError as e:
        raise ValueError(
            f"image {path!r} is over PIL's decoding limit ({e}); if it is genuine, raise PIL.Image.MAX_IMAGE_PIXELS"
        ) from None
    except OSError as e:
        raise ValueError(f"could not read image file {path!r}: {e}") from e
    return image


def _stated_size(image: ImageInput) -> tuple[int, int] | None:
    """(height, width) after EXIF orientation, from the header alone; None for inputs load_rgb rejects."""
    path = image if isinstance(image, (str, os.PathLike)) else None
    if path is not None:
        image = _open_image_file(path, decode=False)
    if isinstance(image, Image.Image):
        width, height = image.size
        try:
            orientation = image.getexif().get(ImageOps.ExifTags.Base.Orientation, 1)
        except OSError as e:
            raise ValueError(f"could not read image file {os.fspath(path or '')!r}: {e}") from e
        if orientation in (5, 6, 7, 8):
            width, height = height, width  # transposed by exif_transpose
        return height, width
    if isinstance(image, np.ndarray) and image.ndim in (2, 3):
        return int(image.shape[0]), int(image.shape[1])
    return None


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise TypeError(
            f"image arrays must be uint8 (H, W) or (H, W, C), got dtype {array.dtype}; convert first, e.g. "
            "(a / 257).round().astype(np.uint8) for 16-bit data"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        mode = "L"
    elif array.ndim == 3 and array.shape[2] in (3, 4):
        mode = "RGB" if array.shape[2] == 3 else "RGBA"
    else:
        raise ValueError(
            f"image arrays must be (H, W) grey or (H, W, C) with C in 1, 3, 4 (channels last), got shape "
            f"{array.shape}"
        )
    if array.size == 0:
        raise ValueError(f"image is empty: shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array), mode=mode)


def load_rgb(image: ImageInput) -> Image.Image:
    """Any supported image input → an upright RGB PIL image (EXIF orientation applied, alpha onto white)."""
    if isinstance(image, (str, os.PathLike)):
        image = _open_image_file(image)
    elif isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(
            f"unsupported image type {type(image).__name__}; pass a PIL image, a uint8 numpy array or a "
            "file path"
        )
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image is empty: {image.width}x{image.height} (w x h)")

    # exif_transpose always copies; only call it when there is a rotation/flip to apply.
    if image.getexif().get(ImageOps.ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)

    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL clips 16-bit values above 255 when converting; scale the full range down instead.
        wide = np.asarray(image).astype(np.uint32)
        image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    elif image.mode in ("I", "F"):
        raise ValueError(
            f"image mode {image.mode!r} (32-bit int/float pixels) has no defined 8-bit range; convert it to "
            "'L' or 'RGB' yourself"
        )

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        # Same compositing as HF's convert_to_rgb: onto an opaque white background.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


# ---------------------------------------------------------------------------------------------- patches


@cache
def normalize_lut(mean: Normalization = IMAGE_MEAN, std: Normalization = IMAGE_STD) -> np.ndarray:
    """(3, 256) float32: the normalized value of every uint8 level per channel, computed with HF's exact
    arithmetic (fp64 rescale, fp32 cast, fp32 subtract and divide)."""
    if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in (*mean, *std)) or min(std) <= 0:
        raise ValueError(f"image_mean / image_std must be 3 finite numbers (std > 0), got {mean}, {std}")
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean_ = np.asarray(mean, dtype=np.float32)[:, None]
    std_ = np.asarray(std, dtype=np.float32)[:, None]
    return (levels[None, :] - mean_) / std_


# Merge blocks per np.take call. np.take first copies its uint8 indices into an int64 array (8x their size);
# ~8 blocks (8 x 4 x 196 indices per channel, a 50 KB int64 copy) keeps that copy, and the floats written,
# in cache instead of streaming a whole-image int64 array (8 bytes per pixel value) through memory.
_BLOCKS_PER_STEP = 8


def _over_row_chunks(work: Callable[[slice], None], rows: int) -> None:
    """Run `work` on chunks of the first axis in threads. NumPy releases the GIL in `take` and in copies,
    so the gather below runs on every core while PIL's resize (the rest of the time) cannot be split."""
    workers = max(1, min(rows, torch.get_num_threads(), os.cpu_count() or 1))
    if workers == 1:
        work(slice(0, rows))
        return
    bounds = [rows * i // workers for i in range(workers + 1)]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:])]))


def _normalize_blocks(src: np.ndarray, out: np.ndarray, time_slot: int | None, lut: np.ndarray) -> None:
    """Normalized rows of every merge block, a few blocks per step, in threads.

    src: (T, by, bx, iy, ix, C, [tp,] P, P) uint8 view (no time axis when `time_slot` is given);
    out: (T, by, bx, iy, ix, C, tp, P, P) float32. `time_slot` None gathers all tp frames; an int gathers
    the single frame into that slot and copies it to the others (a still image is tp equal frames).
    """
    lines, by, bx = src.shape[0] * src.shape[1], src.shape[1], src.shape[2]
    channels = src.shape[5]

    def work(chunk: slice) -> None:
        for line in range(chunk.start, chunk.stop):
            t, y = divmod(line, by)
            for x0 in range(0, bx, _BLOCKS_PER_STEP):
                blocks = slice(x0, x0 + _BLOCKS_PER_STEP)
                pixels, target = src[t, y, blocks], out[t, y, blocks]  # (k, iy, ix, C, ...)
                slot = target if time_slot is None else target[:, :, :, :, time_slot]
                for ch in range(channels):
                    np.take(lut[ch], pixels[:, :, :, ch], out=slot[:, :, :, ch], mode="clip")
                if time_slot is not None:
                    target[:, :, :, :, 1:] = slot[:, :, :, :, None]

    _over_row_chunks(work, lines)


def patchify(
    frames: np.ndarray,
    patch_size: int,
    temporal_patch_size: int,
    merge_size: int,
    lut: np.ndarray | None = None,
) -> np.ndarray:
    """(T, H, W, 3) uint8 with T a multiple of the temporal patch → normalized rows (t·h·w, 3·tp·p·p) fp32
    (`lut`: `normalize_lut(mean, std)`, CLIP's by default)."""
    # (gt, blocks_y, blocks_x, in-block y, in-block x, channel, time, patch y, patch x), a view of the uint8
    # pixels: the reorder happens inside the gather, one pass, each value read once and written once
    x = frames_to_rows(frames, patch_size, temporal_patch_size, merge_size)
    out = np.empty(x.shape, dtype=np.float32)
    _normalize_blocks(x, out, time_slot=None, lut=normalize_lut() if lut is None else lut)
    return out.reshape(-1, x.shape[5] * temporal_patch_size * patch_size**2)


def _patchify_still(
    frame: np.ndarray,
    patch_size: int,
    temporal_patch_size: int,
    merge_size: int,
    lut: np.ndarray | None = None,
) -> np.ndarray:
    """A still image is `temporal_patch_size` identical frames: gather once, then copy along time."""
    x = still_to_rows(frame, patch_size, merge_size)[None]  # (1, by, bx, iy, ix, c, py, px), a view
    out = np.empty((*x.shape[:6], temporal_patch_size, patch_size, patch_size), dtype=np.float32)
    _normalize_blocks(x, out, time_slot=0, lut=normalize_lut() if lut is None else lut)
    return out.reshape(-1, x.shape[5] * temporal_patch_size * patch_size**2)


def check_budget(
    min_pixels: int,
    max_pixels: int,
    patch_size: int,
    merge_size: int,
    max_tokens: int = DEFAULT_MAX_VISION_TOKENS,
) -> int:
    """Validates the size knobs before anything is decoded; returns max_tokens."""
    if (
        isinstance(patch_size, bool)
        or isinstance(merge_size, bool)
        or not isinstance(patch_size, int)
        or not isinstance(merge_size, int)
        or patch_size <= 0
        or merge_size <= 0
    ):
        raise ValueError(f"patch_size and merge_size must be positive, got {patch_size}, {merge_size}")
    return check_pixel_budget(min_pixels, max_pixels, max_tokens)


def _grid_of(
    height: int, width: int, min_pixels: int, max_pixels: int, patch_size: int, merge_size: int
) -> tuple[int, int]:
    """The (h, w) patch grid smart_resize gives a height x width input."""
    h, w = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
    return h // patch_size, w // patch_size


def _resize_rgb(image: Image.Image, min_pixels: int, max_pixels: int, factor: int) -> np.ndarray:
    height, width = smart_resize(image.height, image.width, factor, min_pixels, max_pixels)
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image)


# ---------------------------------------------------------------------------------------------- images


def preprocess_image(
    image: ImageInput | Sequence[ImageInput],
    *,
    min_pixels: int = IMAGE_MIN_PIXELS,
    max_pixels: int = IMAGE_MAX_PIXELS,
    patch_size: int = PATCH_SIZE,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
    max_tokens: int = DEFAULT_MAX_VISION_TOKENS,
    image_mean: Normalization = IMAGE_MEAN,
    image_std: Normalization = IMAGE_STD,
) -> dict[str, torch.Tensor]:
    """One image or a list of images → {"pixel_values": fp32 (Σ h·w, 1176), "image_grid_thw": int64 (n, 3)}.

    An image is a PIL image (any mode), a uint8 numpy array ((H, W) grey or (H, W, C) with C = 1, 3, 4), or a
    path to an image file. Rows of all images are concatenated in order; grid rows are [1, h, w] in patches.
    Equal to transformers' `Qwen2VLImageProcessorPil` (see the module docstring for the input-handling
    differences: EXIF, alpha and 16-bit data are handled the same way for every kind of input).
    `max_tokens` bounds the vision tokens of all images together; it is checked from the image headers
    before any pixel is decoded (see `qwenvl_min.inputs.budget`). `image_mean` / `image_std`: the
    checkpoint's normalization (CLIP's for Qwen2-VL / Qwen2.5-VL, 0.5 for Qwen3-VL).
    """
    max_tokens = check_budget(min_pixels, max_pixels, patch_size, merge_size, max_tokens)
    lut = normalize_lut(tuple(image_mean), tuple(image_std))
    images = list(image) if isinstance(image, (list, tuple)) else [image]
    if not images:
        raise ValueError("no images given")
    planned = 0
    for item in images:
        size = _stated_size(item)
        if size is not None and min(size) > 0:
            gh, gw = _grid_of(*size, min_pixels, max_pixels, patch_size, merge_size)
            planned += gh * gw
    what = "the image" if len(images) == 1 else f"the {len(images)} images"
    check_tokens(what, 1, planned, 1, merge_size, max_tokens, video=False)
    rows, grids = [], []
    for item in images:
        pixels = _resize_rgb(load_rgb(item), min_pixels, max_pixels, patch_size * merge_size)
        rows.append(_patchify_still(pixels, patch_size, temporal_patch_size, merge_size, lut))
        grids.append([1, pixels.shape[0] // patch_size, pixels.shape[1] // patch_size])
    pixel_values = rows[0] if len(rows) == 1 else np.concatenate(rows)
    return {
        "pixel_values": torch.from_numpy(pixel_values),
        "image_grid_thw": torch.tensor(grids, dtype=torch.int64),
    }


# ---------------------------------------------------------------------------------------------- videos


def sample_frame_indices(
    total_frames: int,
    fps: float,
    *,
    sample_fps: float | None = None,
    num_frames: int | None = None,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
    min_frames: int = 4,
    max_frames: int = 768,
) -> np.ndarray:
    """Indices of the frames to keep, as HF's `Qwen2VLVideoProcessor.sample_frames`.

    Neither `sample_fps` nor `num_frames`: every frame. `num_frames`: rounded (half to even) to a multiple of
    the temporal patch. `sample_fps`: total/fps·sample_fps frames, clamped to [min_frames, max_frames] and to
    the video's length, floored to a multiple of the temporal patch. Then uniform: arange(0, total, total/n).
    """
    if total_frames <= 0:
        raise ValueError("the video has no frames")
    finite_number("fps", fps, positive=True, hint="the rate the frames were recorded at")
    if sample_fps is not None:
        finite_number("sample_fps", sample_fps, positive=True)
    if num_frames is not None:
        positive_int("num_frames", num_frames)
    positive_int("min_frames", min_frames)
    positive_int("max_frames", max_frames)
    if sample_fps is not None and num_frames is not None:
        raise ValueError("pass either sample_fps or num_frames, not both")
    if sample_fps is None and num_frames is None:
        return np.arange(total_frames)
    if num_frames is not None:
        n = round(num_frames / temporal_patch_size) * temporal_patch_size
    else:
        if sample_fps <= 0:
            raise ValueError(f"sample_fps must be positive, got {sample_fps}")
        cap = math.floor(min(max_frames, total_frames) / temporal_patch_size) * temporal_patch_size
        n = min(max(total_frames / fps * sample_fps, min_frames), cap, total_frames)
        n = math.floor(n / temporal_patch_size) * temporal_patch_size
    if n <= 0 or n > total_frames:
        raise ValueError(
            f"cannot sample {n} frames from a {total_frames}-frame video (frame counts are multiples of "
            f"{temporal_patch_size}); pass a different num_frames/sample_fps, or neither to keep every frame"
        )
    # HF computes `torch.arange(0, total, total / n).int()` in fp32; we do the same so every index agrees.
    # fp32 rounding sometimes makes that arange one step longer, its last index equal to `total` (out of
    # range; HF's PyAV reader then silently keeps n frames). Keep the first n.
    return torch.arange(0, total_frames, total_frames / n).int().numpy()[:n]


FramePrep = Callable[[int], Callable[[np.ndarray], np.ndarray]]  # kept count -> per-frame transform


def _read_video_file(
    path: str | os.PathLike,
    fps: float | None,
    sampler: Callable[[int, float], np.ndarray],
    prepare: FramePrep,
) -> tuple[list[np.ndarray], float, int]:
    """Decode the frames `sampler(total_frames, fps)` picks, in one pass (see `qwenvl_min.inputs.video_decode`:
    only kept frames are converted, the count is verified while decoding). Returns (frames, fps, total)."""
    header = probe(path, fps)

    def choose(total: int) -> tuple[list[int], None]:
        return sampler(total, header.fps).tolist(), None  # to the end: HF's indices stop near it anyway

    frames, _, total = read_sampled(header, choose, prepare)
    return frames, header.fps, total


def preprocess_video(
    frames: str | os.PathLike | np.ndarray | Sequence[ImageInput],
    *,
    fps: float | None = None,
    sample_fps: float | None = None,
    num_frames: int | None = None,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    min_frames: int = 4,
    max_frames: int = 768,
    patch_size: int = PATCH_SIZE,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
    max_tokens: int = DEFAULT_MAX_VISION_TOKENS,
    image_mean: Normalization = IMAGE_MEAN,
    image_std: Normalization = IMAGE_STD,
) -> dict[str, torch.Tensor]:
    """One video → {"pixel_values_videos": fp32 (t·h·w, 1176), "video_grid_thw": int64 (1, 3),
    "second_per_grid_ts": fp32 (1,)}.

    `frames` is a video file path (decoded with PyAV, fps read from the container unless `fps` is given), a
    uint8 array (T, H, W, C), or a list of frames (anything `preprocess_image` accepts; all the same size).

    `fps` is the rate the frames were recorded at, and it is required for frames and arrays. Trap: HF 5.24's
    video processor silently assumes 24 fps when given frames without metadata (4.x assumed 2), which sets
    `second_per_grid_ts` = 2/24 and squeezes Qwen2.5-VL's temporal positions; we refuse to guess.

    Sampling follows HF (`sample_frame_indices`): by default every frame is kept (as HF's default
    `do_sample_frames=False`); `sample_fps` keeps about that many frames per second, `num_frames` a fixed
    count. Frames are resized to one `smart_resize` size with HF's *video* budget (128·28² to 768·28² pixels
    per frame, so small videos are upscaled), the count is padded to a multiple of the temporal patch by
    repeating the last frame, and `second_per_grid_ts` = temporal_patch_size / sampled fps, with sampled
    fps = kept / total · fps.
    To batch several videos, concatenate the outputs (`concat_outputs`).

    `max_tokens` bounds the video's vision tokens; it is checked from the frame count and the first
    frame's size before any further frame is decoded or resized, and frames are resized as they are
    decoded (see `qwenvl_min.inputs.budget`).
    """
    max_tokens = check_budget(min_pixels, max_pixels, patch_size, merge_size, max_tokens)
    lut = normalize_lut(tuple(image_mean), tuple(image_std))
    if fps is not None:
        fps = finite_number("fps", fps, positive=True, hint="the rate the frames were recorded at")
    factor = patch_size * merge_size

    def sampler(total: int, rate: float) -> np.ndarray:
        return sample_frame_indices(
            total,
            rate,
            sample_fps=sample_fps,
            num_frames=num_frames,
            temporal_patch_size=temporal_patch_size,
            min_frames=min_frames,
            max_frames=max_frames,
        )

    def prepare(count: int) -> Callable[[ImageInput], np.ndarray]:
        """Check the budget for `count` frames from the first frame's size, then resize frame by frame."""
        target: list[tuple[int, int]] = []  # (h, w) of the source, set by the first frame

        def transform(image: ImageInput) -> np.ndarray:
            rgb = load_rgb(image)
            if not target:
                target.append((rgb.height, rgb.width))
                gh, gw = _grid_of(rgb.height, rgb.width, min_pixels, max_pixels, patch_size, merge_size)
                gt = -(-count // temporal_patch_size)
                check_tokens("the video", gt, gh, gw, merge_size, max_tokens, video=True)
            elif (rgb.height, rgb.width) != target[0]:
                raise ValueError(
                    f"all frames of a video must have one size, got {sorted({(target[0][1], target[0][0]), rgb.size})} (w, h)"
                )
            return _resize_rgb(rgb, min_pixels, max_pixels, factor)

        return transform

    if isinstance(frames, (str, os.PathLike)):
        resized, fps, total = _read_video_file(frames, fps, sampler, prepare)
        kept = len(resized)
    else:
        if fps is None:
            raise ValueError(
                "fps is required for frame lists and arrays: pass the rate the frames were recorded at "
                "(HF silently assumes 24, which changes Qwen2.5-VL's temporal positions)"
            )
        if isinstance(frames, np.ndarray) and frames.ndim != 4:
            raise ValueError(f"a video array must be (T, H, W, C), got shape {frames.shape}")
        total = len(frames)
        if total == 0:
            raise ValueError("the video has no frames")
        indices = sampler(total, fps)
        transform = prepare(len(indices))
        resized = [transform(frames[i]) for i in indices]
        kept = len(indices)

    pixels = np.stack(resized)
    if pad := -len(pixels) % temporal_patch_size:
        pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, axis=0)])

    t, h, w = len(pixels) // temporal_patch_size, pixels.shape[1] // patch_size, pixels.shape[2] // patch_size
    sampled_fps = kept / total * fps
    return {
        "pixel_values_videos": torch.from_numpy(
            patchify(pixels, patch_size, temporal_patch_size, merge_size, lut)
        ),
        "video_grid_thw": torch.tensor([[t, h, w]], dtype=torch.int64),
        "second_per_grid_ts": torch.tensor([temporal_patch_size / sampled_fps], dtype=torch.float32),
    }


def concat_outputs(outputs: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate several `preprocess_image` / `preprocess_video` results key by key (in order)."""
    if not outputs:
        raise ValueError("nothing to concatenate")
    keys = outputs[0].keys()
    if any(o.keys() != keys for o in outputs):
        raise ValueError("all outputs must come from the same function (same keys)")
    return {k: torch.cat([o[k] for o in outputs]) for k in keys}
