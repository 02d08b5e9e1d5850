"""soft_align: flash-style kernel vs the naive reference vs torch's scaled_dot_product_attention (one head).

MetaUAS levels (Cqk = C/2 query/key channels, Cv = C value channels; N = h*w positions for query and prompt):
l3 (28, 56), l4 (80, 160), l5 (224, 448) at 256 and 512 input. SDPA gets q and k zero-padded from Cqk to Cv
channels (its CPU flash kernel wants equal head dims; zero channels leave the logits unchanged), scale=1.0.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ad_fast.ops import reference, soft_align
from bench_utils import peak_extra_mib, pick, synchronized

LEVELS = {"l3": (28, 56, 8), "l4": (80, 160, 16), "l5": (224, 448, 32)}  # Cqk, Cv, stride
INPUTS = pick([256, 512], [64])
BATCHES = pick([1, 16], [2])


def _sdpa(q, k, v):
    cv = v.shape[1]
    qp, kp = (F.pad(t.flatten(2), (0, 0, 0, cv - t.shape[1])).mT[:, None] for t in (q, k))
    out = F.scaled_dot_product_attention(qp, kp, v.flatten(2).mT[:, None], scale=1.0)
    return out[:, 0].mT.reshape(q.shape[0], cv, *q.shape[2:])


IMPLS = {
    "kernel": lambda q, k, v: soft_align(q, k, v, backend="kernel"),
    "reference": reference.soft_align,
    "sdpa": _sdpa,
}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("size", INPUTS)
@pytest.mark.parametrize("level", list(LEVELS))
def test_soft_align(benchmark, target, level, size, batch, mode, impl):
    device, dtype = target
    cqk, cv, stride = LEVELS[level]
    side = size // stride
    # Unit-variance logits, as after MetaUAS's 1x1 reduction conv.
    q = torch.randn(batch, cqk, side, side, device=device, dtype=dtype) / cqk**0.25
    k = torch.randn(batch, cqk, side, side, device=device, dtype=dtype) / cqk**0.25
    v = torch.randn(batch, cv, side, side, device=device, dtype=dtype)
    fn_impl = IMPLS[impl]
    if mode == "fwd":

        def fn():
            with torch.no_grad():
                return fn_impl(q, k, v)

    else:
        qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
        grad = torch.randn(batch, cv, side, side, device=device, dtype=dtype)

        def fn():
            return torch.autograd.grad(fn_impl(qg, kg, vg), (qg, kg, vg), grad)

    fn = synchronized(fn, device)
    n = side * side
    benchmark.group = f"soft_align {level} {size}px N={n} b{batch} {mode} {device} {str(dtype)[6:]}"
    benchmark.extra_info["peak_extra_MiB"] = round(peak_extra_mib(fn, device), 1)
    flops = 2 * batch * n * n * (cqk + cv) * (1 if mode == "fwd" else 3.5)  # bwd: 5 products + recomputed QK^T
    benchmark.extra_info["GFLOP"] = round(flops / 1e9, 3)
    result = benchmark(fn)
    assert result is not None
