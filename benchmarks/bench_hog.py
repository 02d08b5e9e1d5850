"""hog: kernel vs the PyTorch reference, scikit-image (per-image loop) and OpenCV's HOGDescriptor.

Settings: 9 orientations, 8x8 cells, 3x3 blocks, L2-Hys (skimage's defaults and ReDi's); OpenCV at the same
cells/blocks/bins (block stride one cell, L2-Hys 0.2, no gamma). OpenCV computes descriptors only (and
interpolates votes); the kernel is timed with and without the HOG image.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage.feature import hog as sk_hog

from ad_fast.ops import hog, reference
from bench_utils import peak_extra_mib, pick, synchronized

CASES = {  # name: (batch, side)
    "b32_rgb256": pick((32, 256), (2, 48)),
    "b1_rgb1024": pick((1, 1024), (1, 64)),
}
IMPLS = ["kernel", "kernel_no_image", "reference", "skimage", "opencv"]


def _runner(impl: str, images: torch.Tensor):
    if impl == "kernel":
        return lambda: hog(images, backend="kernel")
    if impl == "kernel_no_image":
        return lambda: hog(images, visualize=False, backend="kernel")
    if impl == "reference":
        return lambda: reference.hog(images)
    arrays = [np.ascontiguousarray(im.permute(1, 2, 0).cpu().numpy()) for im in images]
    if impl == "skimage":
        return lambda: [sk_hog(a, visualize=True, channel_axis=-1) for a in arrays]
    side = images.shape[-1]
    descriptor = cv2.HOGDescriptor((side, side), (24, 24), (8, 8), (8, 8), 9)
    return lambda: [descriptor.compute(a) for a in arrays]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_hog_cpu(benchmark, case, impl):
    batch, side = CASES[case]
    images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8)
    fn = _runner(impl, images)
    benchmark.group = f"hog {case} cpu uint8"
    benchmark.extra_info["peak_extra_MiB"] = round(peak_extra_mib(fn), 1)
    if impl in ("skimage", "reference"):  # seconds per round: a few rounds only
        result = benchmark.pedantic(fn, rounds=pick(3, 1), iterations=1, warmup_rounds=0)
    else:
        result = benchmark(fn)
    assert len(result) in (batch, 2)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_hog_cuda(benchmark, case, dtype):
    batch, side = CASES[case]
    images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, device="cuda").to(dtype)
    fn = synchronized(lambda: hog(images, backend="kernel"), "cuda")
    benchmark.group = f"hog {case} cuda"
    benchmark.extra_info["peak_extra_MiB"] = round(peak_extra_mib(fn, "cuda"), 1)
    descriptors, hog_image = benchmark(fn)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = round(batch / benchmark.stats.stats.median, 1)
    assert hog_image.shape == (batch, 1, side, side)
