"""Shared benchmark helpers: fast mode for CI, peak-memory measurement, device synchronisation, class margin."""

from __future__ import annotations

import os

import torch

FAST = os.environ.get("AD_FAST_BENCH_FAST") == "1"


def pick(full, fast):
    """``fast`` under AD_FAST_BENCH_FAST=1 (CI smoke run), else ``full``."""
    return fast if FAST else full


def margin(scores, labels) -> float:
    """(lowest defect score - highest good score) / std(good scores): > 0 separates the classes.

    ``scores`` and ``labels`` (1 = defect): tensors or arrays of one value per image.
    """
    scores, labels = torch.as_tensor(scores).double(), torch.as_tensor(labels)
    good, bad = scores[labels == 0], scores[labels == 1]
    spread = float(good.std()) if len(good) > 1 else 1.0
    return (float(bad.min()) - float(good.max())) / max(spread, 1e-12)


def rss_kib(field: str) -> int:
    """A size field of /proc/self/status (VmRSS, VmHWM, RssAnon, ...) in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mib(fn, device: str = "cpu") -> float:
    """Peak memory ``fn()`` adds above what is resident before it (MiB), after one warm-up call.

    CPU: the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) minus RSS before the call.
    CUDA: torch.cuda.max_memory_allocated minus memory_allocated before the call.
    """
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = rss_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return float("nan")
    fn()
    return (rss_kib("VmHWM") - before) / 1024


def synchronized(fn, device: str):
    """``fn`` followed by a device synchronisation, so CUDA timings cover the work."""
    if device != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run
