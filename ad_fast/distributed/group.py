"""The process group every ad_fast trainer and scorer joins under ``torchrun`` (NCCL on CUDA, gloo on CPU)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether this process was started by a launcher with more than one process (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available()


def active() -> bool:
    """Whether a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or no process group): the process that writes files and prints."""
    return rank() == 0


def setup(device: str | torch.device | None = None) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the default process group when launched by ``torchrun``.

    Args:
        device: where this process computes; ``None`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
            The backend is NCCL when the device is CUDA, gloo otherwise.
    """
    if device is None:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if launched() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank(), world_size(), device
