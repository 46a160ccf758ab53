"""Image preprocessing against transformers' PIL backend (`Qwen2VLImageProcessorPil`): bit-exact equality.

HF handles some inputs differently by route (see qwenvl_min/processor.py): EXIF orientation only for paths,
alpha onto white only for PIL objects, 16-bit clipped. Where our choice differs we give HF the input in the
form where it does what we do, and say so.
"""

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from qwenvl_min.inputs.preprocess import preprocess_image


@pytest.fixture(scope="module")
def hf():
    return Qwen2VLImageProcessorPil()


def _noise(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _assert_same(ours, theirs):
    assert ours["pixel_values"].dtype == torch.float32 and ours["image_grid_thw"].dtype == torch.int64
    torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"], rtol=0, atol=0)
    assert torch.equal(ours["image_grid_thw"], theirs["image_grid_thw"])


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "1", "YCbCr", "RGBX"])
def test_pil_modes_match_hf(hf, mode):
    image = Image.fromarray(_noise(97, 150, 4), "RGBA").convert(mode)
    _assert_same(preprocess_image(image), hf(image, return_tensors="pt"))


def test_palette_with_transparency_matches_hf(hf):
    image = Image.fromarray(_noise(60, 90, 3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 3
    _assert_same(preprocess_image(image), hf(image, return_tensors="pt"))


@pytest.mark.parametrize(
    ("h", "w", "min_pixels", "max_pixels"),
    [(480, 640, None, None), (20, 20, None, None), (28, 2000, None, None), (300, 301, 4 * 784, 64 * 784)],
)
def test_sizes_and_budgets_match_hf(hf, h, w, min_pixels, max_pixels):
    image = Image.fromarray(_noise(h, w))
    kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    hf_kwargs = {"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}} if kwargs else {}
    _assert_same(preprocess_image(image, **kwargs), hf(image, return_tensors="pt", **hf_kwargs))


def test_numpy_arrays_and_lists_match_hf(hf):
    rgb, rgba, grey = _noise(70, 110), _noise(45, 33, 4, seed=1), _noise(64, 64, 1, seed=2)[..., 0]
    ours = preprocess_image([rgb, rgba, grey, grey[..., None]])
    # HF's array route wants a channel axis for grey; its alpha blend equals PIL's alpha_composite.
    theirs = hf([rgb, rgba, grey[..., None], grey[..., None]], return_tensors="pt")
    _assert_same(ours, theirs)
    assert ours["image_grid_thw"].tolist() == [
        [1, 4, 8],
        [1, 6, 4],
        [1, 4, 4],
        [1, 4, 4],
    ]  # 70 px: round(2.5) = 2


def test_patch_layout(hf):
    """Rows are merge blocks row-major, (0,0),(0,1),(1,0),(1,1) inside; a row is (channel, time, y, x)."""
    image = _noise(56, 84)
    rows = preprocess_image(image)["pixel_values"].reshape(-1, 3, 2, 14, 14)
    assert torch.equal(rows[:, :, 0], rows[:, :, 1])  # a still image is two identical frames
    plain = hf(image, return_tensors="pt")["pixel_values"].reshape(-1, 3, 2, 14, 14)[:, :, 0]
    full = plain.new_empty(3, 56, 84)  # rebuild the picture from rows in the documented order
    order = [
        (by * 2 + iy, bx * 2 + ix) for by in range(2) for bx in range(3) for iy in range(2) for ix in range(2)
    ]
    for row, (py, px) in zip(rows[:, :, 0], order, strict=True):
        full[:, py * 14 : py * 14 + 14, px * 14 : px * 14 + 14] = row
    assert torch.equal(rows[:, :, 0], plain)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    expected = (torch.from_numpy(image).permute(2, 0, 1).double() / 255 - mean.double()) / std.double()
    torch.testing.assert_close(full.double(), expected, rtol=0, atol=1e-6)


def test_files_match_hf_including_exif(hf, tmp_path):
    image = Image.fromarray(_noise(50, 120))
    exif = Image.Exif()
    exif[ImageOps.ExifTags.Base.Orientation] = 6  # rotate 90° clockwise on display
    jpeg, png = tmp_path / "rotated.jpg", tmp_path / "plain.png"
    image.save(jpeg, exif=exif.tobytes(), quality=90)
    image.save(png)
    ours = preprocess_image([str(jpeg), png])
    _assert_same(ours, hf([str(jpeg), str(png)], return_tensors="pt"))
    assert ours["image_grid_thw"][0].tolist() == [1, 8, 4]  # upright: taller than wide
    # An opened PIL image gets the same orientation (HF would skip EXIF here, so give it the upright image).
    _assert_same(
        preprocess_image(Image.open(jpeg)), hf(ImageOps.exif_transpose(Image.open(jpeg)), return_tensors="pt")
    )


def test_file_with_alpha_is_composited_onto_white(hf, tmp_path):
    """HF's path route drops alpha (convert("RGB")); we composite onto white for every input, as HF does for
    PIL objects."""
    path = tmp_path / "alpha.png"
    Image.fromarray(_noise(40, 60, 4), "RGBA").save(path)
    _assert_same(preprocess_image(path), hf(Image.open(path), return_tensors="pt"))
    assert not torch.equal(
        preprocess_image(path)["pixel_values"], hf(str(path), return_tensors="pt")["pixel_values"]
    )


def test_sixteen_bit_is_scaled_not_clipped(hf):
    wide = np.random.default_rng(3).integers(0, 65536, (40, 60), dtype=np.uint16)
    image = Image.fromarray(wide)
    assert image.mode == "I;16"
    narrow = ((wide.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    assert np.array_equal(narrow, np.round(wide / 257).astype(np.uint8))
    _assert_same(preprocess_image(image), hf(Image.fromarray(narrow), return_tensors="pt"))


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="image file not found"):
        preprocess_image("/nonexistent/picture.png")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(IsADirectoryError, match="expected an image file"):
        preprocess_image(tmp_path)


def test_file_that_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, not pixels")
    with pytest.raises(ValueError, match="is not an image file"):
        preprocess_image(path)


def test_truncated_image_file(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(_noise(64, 64)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="could not read image file"):
        preprocess_image(path)


@pytest.mark.parametrize("shape", [(0, 10, 3), (10, 0), (0, 0, 3)])
def test_zero_sized_array(shape):
    with pytest.raises(ValueError, match="image is empty"):
        preprocess_image(np.zeros(shape, dtype=np.uint8))


def test_zero_sized_pil_image():
    with pytest.raises(ValueError, match="image is empty"):
        preprocess_image(Image.new("RGB", (0, 7)))


def test_aspect_ratio_over_limit():
    with pytest.raises(ValueError, match="aspect ratio"):
        preprocess_image(np.zeros((2, 500, 3), dtype=np.uint8))


def test_min_pixels_over_max_pixels():
    with pytest.raises(ValueError, match="must not exceed max_pixels"):
        preprocess_image(_noise(56, 56), min_pixels=100_000, max_pixels=50_000)


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (np.zeros((8, 8, 3), dtype=np.float32), TypeError, "must be uint8"),
        (np.zeros((8, 8, 2), dtype=np.uint8), ValueError, "channels last"),
        (Image.new("F", (8, 8)), ValueError, "no defined 8-bit range"),
        (12, TypeError, "unsupported image type"),
        ([], ValueError, "no images"),
    ],
)
def test_other_bad_inputs(bad, error, match):
    with pytest.raises(error, match=match):
        preprocess_image(bad)
