"""The one DDP setup of every ad_fast trainer: wrapping, rank-0 broadcast and the per-rank share of a batch."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from .group import active, rank, world_size


def wrap(module: nn.Module, device: str | torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` when a process group is active, else ``module`` itself.

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts from the same weights.
    """
    if not active() or world_size() == 1:
        return module
    device = torch.device(device)
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters)


def broadcast_state(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank, in place (no-op without a process group)."""
    if not active() or world_size() == 1:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src)


class LossModule(nn.Module):
    """A module whose forward is ``loss_fn(*args)``, for training code that calls ``module`` inside a loss closure.

    DDP only synchronises gradients of a forward run through the DDP wrapper; wrapping this module (which owns
    ``module`` as a submodule) routes the closure through it without changing how the loss is computed.
    """

    def __init__(self, module: nn.Module, loss_fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.module = module
        self.loss_fn = loss_fn

    def forward(self, *args: Any) -> torch.Tensor:
        return self.loss_fn(*args)


def local_share(batch: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This rank's part of a global batch of indices, and the weight of its mean loss.

    The batch (Tensor[B], the same on every rank) is cut in ``world_size`` nearly equal contiguous parts; DDP
    averages the ranks' gradients, so a mean loss over a part times ``len(part) * world / B`` makes the step the
    one a single process takes on the whole batch. A batch smaller than the world is used whole on every rank
    (weight 1). Without a process group: ``(batch, 1.0)``.
    """
    world = world_size()
    if world == 1 or len(batch) < world:
        return batch, 1.0
    part = batch.tensor_split(world)[rank()]
    return part, len(part) * world / len(batch)


def mean_over_ranks(value: float) -> float:
    """The mean of a Python float over the ranks (the value itself without a process group)."""
    if not active() or world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor) / world_size()
