"""Image inputs that used to be misread or reported unclearly (issue 20)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ad_fast.data.images import load_image, resize_image, to_image_batch
from ad_fast.data.readers import list_images


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.int64, torch.int8])
def test_integer_tensors_other_than_uint8_are_refused(dtype):
    image = torch.randint(0, 100, (3, 8, 8)).to(dtype)
    with pytest.raises(TypeError, match=r"images\[0\]: expected a uint8, bool or float tensor"):
        to_image_batch(image)


def test_bool_tensor_is_a_zero_one_image():
    images, _ = to_image_batch(torch.tensor([[True, False]]))
    assert images[0][:, 0, :].tolist() == [[1.0, 0.0]] * 3


def test_uint8_tensor_is_scaled_to_unit_range():
    images, _ = to_image_batch(torch.full((3, 2, 2), 255, dtype=torch.uint8))
    assert images[0].max().item() == 1.0


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_image_is_named(value):
    good, bad = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    bad[1, 2, 3] = value
    with pytest.raises(ValueError, match=r"images\[1\]: image contains NaN or Inf"):
        to_image_batch([good, bad])


def test_decompression_bomb_is_a_value_error_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match="big.png"):
        load_image(path)


def test_list_images_skips_hidden_and_mask_files(tmp_path):
    for name in ("b.png", "a.JPG", "a_mask.png", "b_GT.png", "._a.png", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dir.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]


@pytest.mark.parametrize("size", [8193, 10**12, (8, 0)])  # 8192 = MAX_IMAGE_SIDE
def test_resize_refuses_unbounded_sizes(size):
    with pytest.raises(ValueError, match="size"):
        resize_image(torch.rand(3, 4, 4), size)


@pytest.mark.parametrize("size", [None, (31, 17), (64, 64), (101, 77)])
def test_read_image_resizes_from_the_pixels_layout_to_the_same_values(tmp_path, size):
    """read_image resizes the [H, W, 3] pixels through a [3, H, W] view: exactly what resizing a contiguous
    [3, H, W] copy gives, and a contiguous result."""
    from ad_fast.data import read_image

    pixels = np.random.default_rng(0).integers(0, 256, (53, 71, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png", size)
    expected = torch.from_numpy(pixels.astype(np.float32) / np.float32(255)).permute(2, 0, 1).contiguous()
    if size is not None:
        expected = resize_image(expected, size).clamp_(0.0, 1.0)
    assert image.is_contiguous() and torch.equal(image, expected)
