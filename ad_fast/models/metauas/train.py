"""Training loop: BCE on change masks, AdamW (lr 1e-4, wd 5e-4), frozen encoder; DDP-ready.

Runs as-is in one process, and under ``torchrun`` (``WORLD_SIZE`` > 1): it then joins the process group
(NCCL on CUDA, gloo on CPU), shards the data with a ``DistributedSampler`` and averages gradients with DDP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ...distributed import ddp, setup
from .model import MetaUAS


@dataclass
class TrainConfig:
    """Defaults follow the paper (App. A); the schedule is constant (unspecified in the paper)."""

    epochs: int = 30
    batch_size: int = 16  # per process; the paper uses 128 in total
    lr: float = 1e-4
    weight_decay: float = 5e-4
    max_steps: int | None = None
    num_workers: int = 0
    seed: int = 0
    log_every: int = 50


class _PairLogits(nn.Module):
    """DDP needs a module whose forward returns the training output: the logits."""

    def __init__(self, model: MetaUAS):
        super().__init__()
        self.model = model

    def forward(self, query: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        return self.model.forward_logits(query, prompt)


def train(model: MetaUAS, dataset: Dataset, config: TrainConfig = TrainConfig(), device: str | torch.device = "cpu",
          on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``model``'s alignment convs, decoder and head on ``(prompt, query, mask)`` samples.

    Args:
        dataset: items ``{"prompt", "query": [3, S, S] in [0, 1], "mask": [1, S, S]}`` (e.g. ``ChangePairDataset``).
        on_step: called as ``on_step(step, loss)`` after every optimiser step (rank 0 only under DDP).

    Returns:
        The per-step losses of this process.
    """
    if config.batch_size < 1 or config.epochs < 1:
        raise ValueError("config: batch_size and epochs must be positive")
    rank, world, device = setup(device)
    torch.manual_seed(config.seed)
    model.to(device).train()
    network = ddp.wrap(_PairLogits(model), device)
    sampler = DistributedSampler(dataset, shuffle=True, seed=config.seed) if world > 1 else None
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=config.num_workers, drop_last=len(dataset) >= config.batch_size,
                        generator=torch.Generator().manual_seed(config.seed) if sampler is None else None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    max_steps = config.max_steps if config.max_steps is not None else math.inf
    losses: list[float] = []
    for epoch in range(config.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for batch in loader:
            logits = network(batch["query"].to(device), batch["prompt"].to(device))
            loss = F.binary_cross_entropy_with_logits(logits, batch["mask"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if rank == 0 and on_step is not None:
                on_step(len(losses), losses[-1])
            if len(losses) >= max_steps:
                break
        if len(losses) >= max_steps:
            break
    ddp.broadcast_state(model)  # BatchNorm statistics of each rank's last step differ: all ranks keep rank 0's
    model.eval()
    return losses
