"""Benchmark configuration: offline hub and the device fixture (cpu, plus cuda when present).

Run:  pytest benchmarks --benchmark-only --benchmark-group-by=group --benchmark-columns=median,iqr,rounds
CI:   AD_FAST_BENCH_FAST=1 pytest benchmarks --benchmark-disable   (tiny sizes, each case once)
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

_NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=_NO_CUDA)]
# (device, dtype) pairs: float32 on CPU; float32, float16 and bfloat16 on CUDA.
TARGETS = [("cpu", torch.float32)] + [
    pytest.param(("cuda", dt), marks=_NO_CUDA, id=f"cuda-{str(dt)[6:]}") for dt in (torch.float32, torch.float16, torch.bfloat16)
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(params=TARGETS, ids=lambda t: f"{t[0]}-{str(t[1])[6:]}" if isinstance(t, tuple) else None)
def target(request) -> tuple[str, torch.dtype]:
    """(device, dtype) of a kernel benchmark."""
    return request.param
