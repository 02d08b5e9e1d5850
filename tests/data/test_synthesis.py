"""Synthetic anomalies: seeding, mask/image consistency, parameter ranges."""

import numpy as np
import pytest
import torch
from PIL import Image

from ad_fast import synthesis as syn


@pytest.fixture
def image():
    return torch.rand(3, 61, 75, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("fn", [syn.cutpaste_normal, syn.cutpaste_scar, syn.cutpaste, syn.draem_paste])
def test_seeded_and_unchanged_outside_mask(fn, image):
    for seed in range(6):
        out, mask = fn(image, seed)
        again, mask_again = fn(image, np.random.default_rng(seed))
        assert torch.equal(out, again) and torch.equal(mask, mask_again)
        assert out.shape == image.shape and mask.shape == (1, 61, 75)
        assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.sum() > 0
        outside = mask[0] == 0
        assert torch.equal(out[:, outside], image[:, outside])
        assert out.min() >= 0 and out.max() <= 1


def test_cutpaste_normal_area_and_rectangle(image):
    for seed in range(20):
        _, mask = syn.cutpaste_normal(image, seed)
        rows, cols = torch.nonzero(mask[0], as_tuple=True)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert mask.sum() == height * width  # a full rectangle
        assert mask.sum() <= 0.15 * 61 * 75 + 1 and mask.sum() >= 0.02 * 61 * 75 * 0.5


def test_cutpaste_scar_is_thin(image):
    for seed in range(20):
        _, mask = syn.cutpaste_scar(image, seed)
        assert 1 <= mask.sum() <= 16 * 25 + 2 * (16 + 25)  # a rotated strip plus boundary rounding


def test_draem_blend_factor_is_consistent(image):
    texture = torch.full_like(image, 0.25)
    for seed in range(5):
        out, mask = syn.draem_paste(image, seed, texture=texture, augment=False, beta_range=(0.2, 0.6))
        inside = mask[0] > 0
        # out = (1 - beta) * T + beta * image  =>  beta = (out - T) / (image - T), the same for every pixel
        beta = (out[:, inside] - 0.25) / (image[:, inside] - 0.25)
        usable = (image[:, inside] - 0.25).abs() > 0.05
        assert 0.2 - 1e-4 <= beta[usable].min() and beta[usable].max() <= 0.6 + 1e-4
        assert beta[usable].max() - beta[usable].min() < 1e-4


def test_perlin_noise_range_and_threshold_nesting():
    noise = syn.perlin_noise((50, 70), (4, 8), rng=1, angle=30)
    assert noise.shape == (50, 70) and np.abs(noise).max() <= 1.0 + 1e-6 and noise.std() > 0.05
    low = syn.perlin_mask((64, 64), rng=5, threshold=0.3, min_pixels=0)
    high = syn.perlin_mask((64, 64), rng=5, threshold=0.5, min_pixels=0)
    assert low.sum() > high.sum() and torch.all(low >= high)
    with pytest.raises(ValueError, match="scale_exponents"):
        syn.perlin_mask((8, 8), scale_exponents=(3, 3))
    with pytest.raises(TypeError, match="rng"):
        syn.perlin_mask((8, 8), rng="seed")


def test_color_jitter_identity_and_gray_stays_gray():
    image = torch.rand(3, 9, 11)
    same = syn.color_jitter(image, 0, brightness=0, contrast=0, saturation=0, hue=0)
    torch.testing.assert_close(same, image, atol=1e-5, rtol=0)
    gray = torch.rand(1, 9, 11).expand(3, -1, -1)
    out = syn.color_jitter(gray, 1)
    torch.testing.assert_close(out[0], out[1], atol=1e-5, rtol=0)


def test_draem_augment_stays_in_range(image):
    for seed in range(10):
        out = syn.draem_augment(image, seed)
        assert out.shape == image.shape and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("kind", syn.TEXTURE_KINDS)
def test_procedural_textures(kind):
    texture = syn.procedural_texture((40, 52), 3, kind)
    assert texture.shape == (3, 40, 52) and texture.dtype == torch.float32
    assert texture.min() >= 0 and texture.max() <= 1 and texture.std() > 0.01
    assert torch.equal(texture, syn.procedural_texture((40, 52), 3, kind))
    with pytest.raises(ValueError, match="kind"):
        syn.procedural_texture(8, 0, "plaid")


def test_texture_source_from_folder(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "a" / "t.jpg")
    texture = syn.TextureSource(tmp_path, size=16).sample(0)
    assert texture.shape == (3, 16, 16) and abs(float(texture.mean()) - 200 / 255) < 0.02
    assert syn.TextureSource(size=(8, 12)).sample(0).shape == (3, 8, 12)
    with pytest.raises(FileNotFoundError):
        syn.TextureSource(tmp_path / "missing")
