"""anomaly_map: fused kernel vs the unfused PyTorch reference (3 levels, cosine, blur sigma 4)."""

from __future__ import annotations

import pytest
import torch

from ad_fast.ops import anomaly_map, reference
from bench_utils import peak_extra_mib, pick, synchronized

# (batch, [(C, H, W) per level], out size): the size, and MetaUAS/ReDi-like single-image maps.
CASES = {
    "b8_256-512-1024ch_out256": pick((8, [(256, 64, 64), (512, 32, 32), (1024, 16, 16)], 256), (1, [(16, 8, 8), (32, 4, 4)], 16)),
    "b1_256-512-1024ch_out256": pick((1, [(256, 64, 64), (512, 32, 32), (1024, 16, 16)], 256), (1, [(8, 4, 4)], 8)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_anomaly_map(benchmark, target, case, impl):
    device, dtype = target
    batch, shapes, out = CASES[case]
    a = [torch.randn(batch, c, h, w, device=device, dtype=dtype) for c, h, w in shapes]
    b = [torch.randn(batch, c, h, w, device=device, dtype=dtype) for c, h, w in shapes]
    fn = (lambda: anomaly_map(a, b, out, blur_sigma=4.0, backend="kernel")) if impl == "kernel" else (
        lambda: reference.anomaly_map(a, b, out, blur_sigma=4.0))
    fn = synchronized(fn, device)
    benchmark.group = f"anomaly_map {case} {device} {str(dtype)[6:]}"
    benchmark.extra_info["peak_extra_MiB"] = round(peak_extra_mib(fn, device), 1)
    with torch.inference_mode():
        result = benchmark(fn)
    assert result.shape == (batch, 1, out, out)
