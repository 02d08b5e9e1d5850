"""Times the CPU kernels whose hot loops run through cpu::parallel_for, one line per process (the instruction-set
choice is per process), to compare builds in interleaved runs as benchmarks/RESULTS.md "Portable build" does:

  PYTHONPATH=<tree> python benchmarks/cpu_dispatch_ab.py LABEL      (AD_FAST_CPU_CAPABILITY=default: baseline clones)
"""

from __future__ import annotations

import sys
import time

import torch

import ad_fast


def median_ms(fn, reps: int = 5) -> float:
    """Median wall time of ``reps`` calls of ``fn`` after one warm-up call, in ms."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main(label: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    image = torch.rand(1, 3, 1024, 1024)
    feats_a = [torch.randn(1, 256, 64, 64), torch.randn(1, 512, 32, 32), torch.randn(1, 1024, 16, 16)]
    feats_b = [torch.randn_like(f) for f in feats_a]
    rows = torch.randn(50_000, 128)
    q, k, v = torch.randn(16, 28, 16, 16), torch.randn(16, 28, 16, 16), torch.randn(16, 56, 16, 16)
    cases = {
        "hog 1x3x1024^2": lambda: ad_fast.ops.hog(image, backend="kernel"),
        "anomaly_map b1 out256": lambda: ad_fast.ops.anomaly_map(feats_a, feats_b, out_size=256, blur_sigma=4.0,
                                                                 backend="kernel"),
        "kcenter 50k x128, 100 picks": lambda: ad_fast.ops.kcenter_greedy(rows, n_select=100, projection_dim=None,
                                                                          backend="kernel"),
        "soft_align 16x(256x256) fwd": lambda: ad_fast.ops.soft_align(q, k, v, backend="kernel"),
    }
    timings = " ".join(f"{name}={median_ms(fn):.1f}" for name, fn in cases.items())
    print(label, ad_fast.ops.backend_info().get("cpu_capability"), timings, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
