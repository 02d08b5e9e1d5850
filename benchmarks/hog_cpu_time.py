"""hog vs scikit-image and OpenCV in single-thread CPU time (time.process_time, best of N).

Steadier than wall time on a shared machine. Run: OMP_NUM_THREADS=1 python benchmarks/hog_cpu_time.py
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import torch
from skimage.feature import hog as sk_hog

from ad_fast.ops import hog, reference


def best_cpu_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    for batch, side in [(32, 256), (1, 1024)]:
        images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8)
        arrays = [np.ascontiguousarray(im.permute(1, 2, 0).numpy()) for im in images]
        descriptor = cv2.HOGDescriptor((side, side), (24, 24), (8, 8), (8, 8), 9)
        kernel = best_cpu_seconds(lambda: hog(images, backend="kernel"), 10)
        no_image = best_cpu_seconds(lambda: hog(images, visualize=False, backend="kernel"), 10)
        opencv = best_cpu_seconds(lambda: [descriptor.compute(a) for a in arrays], 5)
        subset = arrays[: min(batch, 4)]  # scikit-image: time 4 images, scale to the batch
        skimage = best_cpu_seconds(lambda: [sk_hog(a, visualize=True, channel_axis=-1) for a in subset], 1)
        skimage *= batch / len(subset)
        ref = best_cpu_seconds(lambda: reference.hog(images), 1)
        print(
            f"b{batch} {side}x{side}: kernel {kernel * 1e3:.1f} ms, kernel without image {no_image * 1e3:.1f} ms, "
            f"opencv {opencv * 1e3:.1f} ms, reference {ref * 1e3:.0f} ms, skimage {skimage * 1e3:.0f} ms | "
            f"{skimage / kernel:.0f}x skimage, {opencv / kernel:.2f}x opencv ({opencv / no_image:.2f}x without image)"
        )


if __name__ == "__main__":
    main()
