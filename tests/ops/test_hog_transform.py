"""HOGTransform: the ReDi HOG map vs scikit-image's gallery recipe, options, batch/single input, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data, exposure
from skimage.color import rgb2gray
from skimage.feature import hog as sk_hog

from ad_fast.ops import HOGTransform, use_backend

ATOL = 1e-5  # outputs live in [0, 1]; float32 kernel vs float64 scikit-image


def skimage_map(image: np.ndarray, orientations=9, cell=8, channel_axis=-1) -> np.ndarray:
    """skimage gallery recipe: HOG image of 0-255 data, rescale_intensity(in_range=(0, 10))."""
    _, hog_image = sk_hog(
        image, orientations=orientations, pixels_per_cell=(cell, cell), visualize=True, channel_axis=channel_axis
    )
    return exposure.rescale_intensity(hog_image, in_range=(0, 10))


def test_default_matches_skimage_recipe_on_float_and_uint8_input():
    image = data.astronaut()[:200, 40:264]
    expected = skimage_map(image)
    as_float = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    as_uint8 = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    for backend in ("kernel", "reference"):
        with use_backend(backend):
            for x in (as_float, as_uint8):
                out = HOGTransform()(x)
                assert out.shape == (1, 200, 224) and out.dtype == torch.float32
                np.testing.assert_allclose(out[0].numpy(), expected, atol=ATOL)


def test_gray_mode_orientations_and_cells():
    image = data.coffee()[:120, :150]
    gray_255 = rgb2gray(image) * 255.0
    expected = skimage_map(gray_255, orientations=18, cell=4, channel_axis=None)
    x = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    out = HOGTransform(orientations=18, pixels_per_cell=4, colour="gray")(x)
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-4)  # gray conversion in float32 here


def test_batch_scale_range_and_channels():
    images = torch.rand(3, 3, 40, 48)
    base = HOGTransform()(images)
    assert base.shape == (3, 1, 40, 48)
    for i in range(3):
        torch.testing.assert_close(HOGTransform()(images[i]), base[i])
    signed = HOGTransform(value_range=(-1.0, 1.0), out_channels=3)(images)
    assert signed.shape == (3, 3, 40, 48)
    torch.testing.assert_close(signed, (base * 2 - 1).expand(-1, 3, -1, -1))
    by_max = HOGTransform(scale="max")(images)
    raw = HOGTransform(clip_max=1e9)(images) * 1e9  # unclipped HOG image
    torch.testing.assert_close(by_max, raw / raw.amax(dim=(1, 2, 3), keepdim=True), rtol=1e-5, atol=1e-6)
    assert float(by_max.amax()) == pytest.approx(1.0)
    blank = HOGTransform(scale="max")(torch.zeros(1, 3, 16, 16))
    assert torch.equal(blank, torch.zeros_like(blank))  # no division by zero
    assert torch.equal(HOGTransform(input_max=255.0)(images * 255), base)


def test_bad_arguments():
    with pytest.raises(ValueError, match="colour"):
        HOGTransform(colour="hsv")
    with pytest.raises(ValueError, match="scale"):
        HOGTransform(scale="log")
    with pytest.raises(ValueError, match="clip_max"):
        HOGTransform(clip_max=0)
    with pytest.raises(ValueError, match="out_channels"):
        HOGTransform(out_channels=2)
    with pytest.raises(ValueError, match="value_range"):
        HOGTransform(value_range=(1.0, 0.0))
    with pytest.raises(TypeError, match="images"):
        HOGTransform()(np.zeros((3, 16, 16)))
    with pytest.raises(ValueError, match="images"):
        HOGTransform()(torch.zeros(16, 16))
    with pytest.raises(ValueError, match="smaller than one block"):
        HOGTransform()(torch.zeros(3, 7, 16))
