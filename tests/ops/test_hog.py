"""hog: kernel and reference vs scikit-image (the oracle), odd sizes, every block norm, dtypes, layouts, bad input.

Bounds (the issue's): descriptors within 1e-4 relative (``rtol=1e-4`` plus ``atol=1e-6`` for entries near zero;
normalised entries are <= 1); HOG images within 1e-4 of the oracle image's peak. Kernel vs reference: the same
bounds; half/bfloat16 inputs are compared with the reference on the same (rounded) values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data, draw
from skimage.feature import hog as sk_hog

from ad_fast.ops import hog, reference
from ad_fast.ops.hog import BLOCK_NORMS, hog_stencils, line_endpoints

DESC_RTOL, DESC_ATOL, IMAGE_RTOL = 1e-4, 1e-6, 1e-4


def to_batch(image: np.ndarray) -> torch.Tensor:
    """[H, W] or [H, W, C] array → [1, C, H, W] tensor with the same dtype."""
    array = image[:, :, None] if image.ndim == 2 else image
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]


def skimage_hog(image: np.ndarray, orientations, cell, block, block_norm, transform_sqrt=False):
    return sk_hog(
        image,
        orientations=orientations,
        pixels_per_cell=cell,
        cells_per_block=block,
        block_norm=block_norm,
        transform_sqrt=transform_sqrt,
        visualize=True,
        channel_axis=-1 if image.ndim == 3 else None,
    )


def assert_matches(descriptors, hog_image, expected_desc, expected_image):
    np.testing.assert_allclose(descriptors.double().cpu().numpy(), expected_desc, rtol=DESC_RTOL, atol=DESC_ATOL)
    peak = max(float(np.abs(expected_image).max()), 1e-12)
    err = np.abs(hog_image.double().cpu().numpy() - expected_image).max()
    assert err <= IMAGE_RTOL * peak, f"HOG image error {err} > {IMAGE_RTOL} * {peak}"


def check_against_skimage(image, orientations, cell, block, block_norm, transform_sqrt=False, backends=("kernel",)):
    expected_desc, expected_image = skimage_hog(image, orientations, cell, block, block_norm, transform_sqrt)
    for backend in backends:
        desc, hog_image = hog(to_batch(image), orientations, cell, block, block_norm, transform_sqrt, backend=backend)
        assert desc.shape == (1, expected_desc.size) and hog_image.shape == (1, 1, *image.shape[:2])
        assert_matches(desc[0], hog_image[0, 0], expected_desc, expected_image)


PHOTOS = {
    "astronaut": lambda: data.astronaut()[100:301, 150:383],  # RGB face crop, odd size
    "camera": lambda: data.camera()[::2, ::2],
    "brick": lambda: data.brick()[:160, :200],
    "grass": lambda: data.grass()[:150, :170],
    "coffee": lambda: data.coffee()[100:260, 200:420],
}


@pytest.mark.parametrize(
    "photo, orientations, cell, block_norm",
    [
        ("astronaut", 9, (8, 8), "L2-Hys"),
        ("astronaut", 18, (4, 4), "L1"),
        ("camera", 9, (8, 8), "L2-Hys"),
        ("camera", 4, (16, 16), "L1-sqrt"),
        ("brick", 4, (8, 8), "L2"),
        ("grass", 18, (4, 4), "L2-Hys"),
        ("coffee", 9, (16, 16), "L1"),
    ],
)
def test_photos_match_skimage(photo, orientations, cell, block_norm):
    check_against_skimage(PHOTOS[photo](), orientations, cell, (3, 3), block_norm, backends=("kernel", "reference"))


@pytest.mark.parametrize("block_norm", BLOCK_NORMS)
@pytest.mark.parametrize("colour", [False, True])
def test_random_odd_sizes_every_norm(block_norm, colour):
    rng = np.random.default_rng(7)
    shape = (53, 71, 3) if colour else (61, 45)
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    check_against_skimage(image, 9, (8, 8), (2, 3), block_norm, backends=("kernel", "reference"))


@pytest.mark.parametrize("orientations, cell", [(4, (4, 4)), (7, (5, 6)), (18, (16, 16)), (1, (3, 2))])
def test_random_float_images_and_odd_settings(orientations, cell):
    rng = np.random.default_rng(orientations)
    image = rng.random((69, 77, 3)).astype(np.float32)
    check_against_skimage(image, orientations, cell, (2, 2), "L2-Hys", backends=("kernel", "reference"))


@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_transform_sqrt(dtype):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(45, 58, 3)).astype(dtype)
    check_against_skimage(image, 9, (6, 6), (3, 3), "L1", transform_sqrt=True, backends=("kernel", "reference"))


def test_exact_bin_edges_and_the_180_quirk():
    """Gradients exactly on bin edges (0/45/90/135 degrees: integer images with 4 and 8 bins) and a tiny negative
    row gradient whose angle rounds to 180.0 (scikit-image drops that pixel) bin exactly like scikit-image."""
    yy, xx = np.mgrid[:40, :48]
    stairs = ((xx + yy) // 3 * 40 + (xx - 2 * yy) % 5 * 7).astype(np.uint8)
    for orientations in (4, 8, 2):
        check_against_skimage(stairs, orientations, (4, 4), (2, 2), "L1")
    ramp = np.tile(np.arange(40, dtype=np.float64)[None, :], (40, 1))
    ramp[2::4] -= 1e-18 * np.arange(40)  # g_row = -tiny, g_col = 2: rad2deg(atan2) % 180 == 180.0
    expected_desc, _ = skimage_hog(ramp, 9, (4, 4), (2, 2), "L1")
    desc = hog(to_batch(ramp), 9, (4, 4), (2, 2), "L1", visualize=False, backend="kernel")
    np.testing.assert_allclose(desc[0].numpy(), expected_desc, rtol=DESC_RTOL, atol=DESC_ATOL)


def test_line_shape_changes_between_cells_like_skimage():
    """9 bins, 6-pixel cells: bin 7's column offset 2 * sin(150 degrees) is 0.99999999999999..., so ``int(cx - d_r)``
    depends on how the sum rounds at each absolute centre and bin 7's line changes shape along the image."""
    r0, r1, c0, c1 = line_endpoints(9, (6, 6), (10, 40))
    assert len(set(c1[7].tolist())) == 2  # the quirk is exercised
    image = np.random.default_rng(5).integers(0, 256, size=(60, 240)).astype(np.uint8)
    check_against_skimage(image, 9, (6, 6), (2, 2), "L2", backends=("kernel", "reference"))


def test_stencils_match_skimage_draw_and_the_spec():
    for orientations in (1, 2, 4, 9, 18, 31):
        for cell in ((2, 2), (4, 4), (5, 7), (8, 8), (16, 16), (12, 6)):
            radius = min(cell) // 2 - 1
            mids = np.pi * (np.arange(orientations) + 0.5) / orientations
            expected = np.zeros((orientations, *cell))
            for o, (d_r, d_c) in enumerate(zip(radius * np.sin(mids), radius * np.cos(mids))):
                c_r, c_c = cell[0] // 2, cell[1] // 2
                rr, cc = draw.line(int(c_r - d_c), int(c_c + d_r), int(c_r + d_c), int(c_c - d_r))
                expected[o, rr, cc] = 1
            np.testing.assert_array_equal(hog_stencils(orientations, cell).numpy(), expected)
    spec_bin0 = ["00000000", "00001000", "00001000", "00001000", "00010000", "00010000", "00010000", "00000000"]
    spec_bin4 = ["00000000"] * 4 + ["01111111"] + ["00000000"] * 3
    stencils = hog_stencils(9, 8).int().numpy()
    assert ["".join(map(str, row)) for row in stencils[0]] == spec_bin0
    assert ["".join(map(str, row)) for row in stencils[4]] == spec_bin4
    np.testing.assert_array_equal(stencils[2], stencils[3])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_kernel_matches_reference_other_dtypes(dtype):
    images = (torch.rand(2, 3, 37, 50, dtype=torch.float64) * 255).to(dtype)
    desc, image = hog(images, 9, (6, 5), (2, 2), "L2-Hys", backend="kernel")
    ref_desc, ref_image = reference.hog(images, 9, (6, 5), (2, 2), "L2-Hys")
    expected = torch.float64 if dtype == torch.float64 else torch.float32
    assert desc.dtype == image.dtype == expected
    torch.testing.assert_close(desc, ref_desc, rtol=DESC_RTOL, atol=DESC_ATOL)
    torch.testing.assert_close(image, ref_image, rtol=0, atol=IMAGE_RTOL * float(ref_image.abs().max()))


def test_batch_layouts_and_shapes():
    images = torch.randint(0, 256, (3, 3, 41, 39), dtype=torch.uint8)
    desc, image = hog(images, 9, 8, 2, backend="kernel")
    for view in (images.contiguous(memory_format=torch.channels_last), images.flip(-1).flip(-1)[:, :, :, :]):
        d2, i2 = hog(view, 9, 8, 2, backend="kernel")
        torch.testing.assert_close(d2, desc, rtol=0, atol=0)
        torch.testing.assert_close(i2, image, rtol=0, atol=0)
    strided = torch.randint(0, 256, (2, 3, 82, 90), dtype=torch.uint8)[:, :, ::2, 1::2]
    torch.testing.assert_close(
        hog(strided, 9, 8, 2, backend="kernel")[0], hog(strided.contiguous(), 9, 8, 2, backend="kernel")[0]
    )
    for i in range(3):  # each image of a batch is independent
        d1, i1 = hog(images[i : i + 1], 9, 8, 2, backend="kernel")
        torch.testing.assert_close(d1, desc[i : i + 1], rtol=0, atol=0)
        torch.testing.assert_close(i1, image[i : i + 1], rtol=0, atol=0)
    blocks = hog(images, 9, 8, (2, 3), feature_vector=False, visualize=False, backend="kernel")
    assert blocks.shape == (3, 41 // 8 - 1, 39 // 8 - 2, 2, 3, 9)
    ref_blocks = reference.hog(images, 9, 8, (2, 3), feature_vector=False, visualize=False)
    torch.testing.assert_close(blocks, ref_blocks, rtol=DESC_RTOL, atol=DESC_ATOL)
    assert image[:, :, 40:].abs().max() == 0 and image[:, :, :, 32:].abs().max() == 0  # remainder stays blank


def test_minimal_size_and_single_cell():
    image = np.random.default_rng(1).integers(0, 256, size=(8, 8)).astype(np.uint8)
    check_against_skimage(image, 9, (8, 8), (1, 1), "L2-Hys", backends=("kernel", "reference"))
    image = np.random.default_rng(2).integers(0, 256, size=(2, 3)).astype(np.uint8)
    check_against_skimage(image, 5, (2, 3), (1, 1), "L1", backends=("kernel", "reference"))
    rng = np.random.default_rng(3)
    for shape in [(1, 1), (3, 2), (7, 1)]:  # 1-pixel cells and images: descriptors only
        image = rng.integers(0, 256, size=shape).astype(np.uint8)
        expected = sk_hog(image, 5, (1, 1), (1, 1), "L1")
        for backend in ("kernel", "reference"):
            desc = hog(to_batch(image), 5, 1, 1, "L1", visualize=False, backend=backend)
            np.testing.assert_allclose(desc[0].numpy(), expected, rtol=DESC_RTOL, atol=DESC_ATOL)


@pytest.mark.parametrize("backend", ["kernel", "reference"])
def test_bad_input(backend):
    good = torch.zeros(1, 3, 32, 32)
    cases = [
        (TypeError, "images", lambda: hog(good.numpy(), backend=backend)),
        (ValueError, "images", lambda: hog(good[0], backend=backend)),
        (TypeError, "images", lambda: hog(good.int(), backend=backend)),
        (ValueError, "images", lambda: hog(torch.zeros(1, 2, 32, 32), backend=backend)),
        (ValueError, "images", lambda: hog(torch.zeros(0, 3, 32, 32), backend=backend)),
        (ValueError, "images", lambda: hog(torch.zeros(1, 3, 0, 32), backend=backend)),
        (ValueError, "smaller than one block", lambda: hog(torch.zeros(1, 3, 23, 32), backend=backend)),
        (ValueError, "block_norm", lambda: hog(good, block_norm="L3", backend=backend)),
        (ValueError, "orientations", lambda: hog(good, orientations=0, backend=backend)),
        (TypeError, "orientations", lambda: hog(good, orientations=9.0, backend=backend)),
        (ValueError, "pixels_per_cell", lambda: hog(good, pixels_per_cell=(8, 0), backend=backend)),
        (ValueError, "pixels_per_cell", lambda: hog(good, pixels_per_cell=1, backend=backend)),
        (ValueError, "cells_per_block", lambda: hog(good, cells_per_block=(1, 2, 3), backend=backend)),
        (ValueError, "non-negative", lambda: hog(good - 1, transform_sqrt=True, backend=backend)),
    ]
    for error, words, call in cases:
        with pytest.raises(error, match=words):
            call()
    hog(good, pixels_per_cell=1, cells_per_block=1, visualize=False, backend=backend)  # no render: allowed


def test_op_direct_call_errors_and_opcheck():
    with pytest.raises(RuntimeError, match="smaller than one block"):
        torch.ops.ad_fast.hog(torch.zeros(1, 1, 10, 10), 9, [8, 8], [2, 2], "L2-Hys", False, True)
    with pytest.raises(RuntimeError, match="block_norm"):
        torch.ops.ad_fast.hog(torch.zeros(1, 1, 16, 16), 9, [8, 8], [1, 1], "L3", False, True)
    images = torch.randint(0, 256, (2, 3, 20, 27), dtype=torch.uint8)
    torch.library.opcheck(torch.ops.ad_fast.hog, (images, 9, [4, 5], [2, 2], "L1", False, True))
    torch.library.opcheck(torch.ops.ad_fast.hog, (images.float(), 4, [8, 8], [1, 1], "L2-Hys", True, False))


def test_torch_compile():
    images = torch.randint(0, 256, (2, 3, 20, 27), dtype=torch.uint8)
    compiled = torch.compile(
        lambda x: torch.ops.ad_fast.hog(x, 9, [4, 5], [2, 2], "L2-Hys", False, True), fullgraph=True
    )
    desc, image = compiled(images)
    ref_desc, ref_image = reference.hog(images, 9, (4, 5), (2, 2), feature_vector=False)
    torch.testing.assert_close(desc, ref_desc, rtol=DESC_RTOL, atol=DESC_ATOL)
    torch.testing.assert_close(image, ref_image, rtol=0, atol=IMAGE_RTOL * float(ref_image.abs().max()))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64, torch.float16])
def test_cuda_matches_cpu_kernel(dtype):
    images = (torch.rand(3, 3, 75, 93) * 255).to(dtype)
    settings = [
        (9, (8, 8), (3, 3), "L2-Hys", False),
        (18, (4, 4), (2, 2), "L1-sqrt", True),
        (4, (16, 5), (1, 2), "L1", False),
    ]
    on_gpu = images.cuda().contiguous(memory_format=torch.channels_last)
    for args in settings:
        desc, image = hog(images, *args, backend="kernel")
        cuda_desc, cuda_image = hog(on_gpu, *args, backend="kernel")
        torch.testing.assert_close(cuda_desc.cpu(), desc, rtol=DESC_RTOL, atol=DESC_ATOL)
        torch.testing.assert_close(cuda_image.cpu(), image, rtol=0, atol=IMAGE_RTOL * float(image.abs().max()))


@pytest.mark.cuda
def test_cuda_matches_skimage_on_photo():
    image = data.astronaut()
    expected_desc, expected_image = skimage_hog(image, 9, (8, 8), (3, 3), "L2-Hys")
    desc, hog_image = hog(to_batch(image).cuda(), backend="kernel")
    assert_matches(desc[0], hog_image[0, 0], expected_desc, expected_image)


@pytest.mark.slow
@pytest.mark.parametrize("block_norm", BLOCK_NORMS)
@pytest.mark.parametrize("orientations", [4, 9, 18])
@pytest.mark.parametrize("cell", [4, 8, 16])
@pytest.mark.parametrize("colour", [False, True])
def test_sweep_against_skimage(block_norm, orientations, cell, colour):
    rng = np.random.default_rng(orientations * 100 + cell)
    shape = (3 * cell + 13, 4 * cell + 7) + ((3,) if colour else ())
    for image in (rng.integers(0, 256, size=shape).astype(np.uint8), rng.random(shape).astype(np.float32)):
        check_against_skimage(image, orientations, (cell, cell), (3, 3), block_norm, backends=("kernel", "reference"))
    photo = data.astronaut()[:160, :200] if colour else data.gravel()[:160, :200]
    check_against_skimage(photo, orientations, (cell, cell), (2, 2), block_norm, backends=("kernel", "reference"))
