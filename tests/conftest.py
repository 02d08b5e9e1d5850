"""Shared test configuration: offline hub, deterministic seeds, the cuda marker and device fixture."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch


def _cuda_ready() -> bool:
    from ad_fast._extension import has_cuda_ops

    return torch.cuda.is_available() and has_cuda_ops()


def pytest_collection_modifyitems(config, items):
    if _cuda_ready():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and ad_fast built with CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _poison_cuda_memory(request):
    """Before every CUDA test, fill 256 MiB of the caching allocator with NaN and free it, so an output element a
    kernel forgets to write reads back as NaN instead of a stale or zero value and fails the comparison."""
    if request.node.get_closest_marker("cuda") is not None and torch.cuda.is_available():
        torch.empty(64 * 2**20, device="cuda").fill_(float("nan"))
        torch.cuda.synchronize()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param
