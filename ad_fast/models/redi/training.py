"""ReDi's two training stages (spec §3): AdamW with step decay, resumable from a per-stage checkpoint."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ...distributed import ddp, load_training_state, save_training_state, setup
from .config import ReDiConfig

CHECKPOINT_VERSION = 1
LR_DECAY = 0.5


def stage_lr(base_lr: float, milestones: tuple[int, ...], epoch: int) -> float:
    """Learning rate of ``epoch`` (0-based): ``base_lr`` × 0.5 per milestone already passed (MultiStepLR)."""
    return base_lr * LR_DECAY ** sum(epoch >= m for m in milestones)


def epoch_batches(n_items: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """A seeded shuffle of ``range(n_items)`` split into batches; a trailing batch of one joins the previous
    one (BatchNorm cannot train on a single 1x1 sample)."""
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed))
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        last = batches.pop()
        batches[-1] = torch.cat([batches[-1], last])
    return batches


def checkpoint_path(checkpoint_dir: str | os.PathLike, stage: int) -> Path:
    return Path(checkpoint_dir) / f"redi_stage{stage}.pt"


def config_differences(stored: dict, config: ReDiConfig) -> list[str]:
    """The options (other than the epoch counts, which may grow) in which a checkpoint's stored configuration
    differs from ``config``, as ``"name: stored -> current"``; options missing from ``stored`` take their defaults.

    Raises:
        ValueError: ``stored`` is not a valid ReDi configuration.
    """
    stored = ReDiConfig.from_dict(stored).to_dict()
    current = config.to_dict()
    return [f"{k}: {stored[k]!r} -> {v!r}" for k, v in current.items() if not k.endswith("_epochs") and stored[k] != v]


def _load_checkpoint(path: Path, stage: int, config: ReDiConfig) -> dict:
    state = load_training_state(path, f"ReDi stage-{stage} checkpoint")
    if state.get("version") != CHECKPOINT_VERSION or state.get("stage") != stage:
        raise ValueError(f"checkpoint_dir: {str(path)!r} is not a ReDi stage-{stage} checkpoint (version {CHECKPOINT_VERSION})")
    kinds = {"module": dict, "optimizer": dict, "epoch": int, "history": list}
    malformed = [key for key, kind in kinds.items() if not isinstance(state.get(key), kind)]
    if malformed:
        raise ValueError(f"checkpoint_dir: {str(path)!r} is a malformed ReDi stage-{stage} checkpoint "
                         f"(missing or wrong: {', '.join(malformed)})")
    try:
        differences = config_differences(state.get("config"), config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint_dir: {str(path)!r} holds no valid ReDi configuration: {error}") from error
    if differences:
        raise ValueError(f"checkpoint_dir: {str(path)!r} was written with a different ReDi configuration "
                         f"(checkpoint -> this model: {'; '.join(differences)})")
    return state


def run_stage(
    stage: int,
    module: nn.Module,
    step_loss: Callable[[torch.Tensor], torch.Tensor],
    n_items: int,
    config: ReDiConfig,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
) -> list[float]:
    """Train ``module`` (its parameters that require grad) for the stage's epochs; returns the mean loss per epoch.

    ``step_loss(indices)`` returns the loss of one batch of training-set indices. With ``checkpoint_dir`` the
    module, optimiser, epoch and loss history are saved after every epoch (atomically) and, with ``resume``, an
    existing checkpoint of this stage is continued; the shuffles are seeded per epoch, so a resumed run sees
    the same batches as an unbroken one.

    Under ``torchrun`` every rank draws the same batches, computes the loss of its share of each
    (:func:`ad_fast.distributed.ddp.local_share`) and DDP averages the gradients, so a step is the one-process
    step on the whole batch up to BatchNorm, whose statistics are per rank (rank 0's are kept at the end); rank 0
    writes the checkpoints. At world size 1 nothing changes.
    """
    epochs = getattr(config, f"stage{stage}_epochs")
    base_lr = getattr(config, f"stage{stage}_lr")
    milestones = getattr(config, f"stage{stage}_milestones")
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=base_lr, weight_decay=config.weight_decay)
    start, history = 0, []
    path = checkpoint_path(checkpoint_dir, stage) if checkpoint_dir is not None else None
    if path is not None and resume and path.is_file():
        state = _load_checkpoint(path, stage, config)
        try:
            module.load_state_dict(state["module"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise ValueError(f"checkpoint_dir: {str(path)!r} does not fit this ReDi stage {stage}: {error}") from error
        start, history = int(state["epoch"]), list(state["history"])
    device = next(module.parameters()).device
    setup(device)  # joins torchrun's process group, if launched by it
    network = ddp.wrap(ddp.LossModule(module, step_loss), device)
    bar = tqdm(range(start, epochs), initial=start, total=epochs, desc=f"ReDi stage {stage}", disable=not progress)
    for epoch in bar:
        for group in optimizer.param_groups:
            group["lr"] = stage_lr(base_lr, milestones, epoch)
        module.train()
        total, count = 0.0, 0
        for batch in epoch_batches(n_items, config.batch_size, config.seed * 100_003 + stage * 10_007 + epoch):
            share, weight = ddp.local_share(batch)
            loss = network(share)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"ReDi stage {stage}: loss became {loss.item()} at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            (loss * weight if weight != 1.0 else loss).backward()
            optimizer.step()
            total += loss.item() * len(share)
            count += len(share)
        history.append(ddp.mean_over_ranks(total / count))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        if path is not None:
            save_training_state(path, {
                "version": CHECKPOINT_VERSION, "stage": stage, "epoch": epoch + 1, "config": config.to_dict(),
                "module": module.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
            })
    ddp.broadcast_state(module)  # BatchNorm statistics of each rank's last step differ: all ranks keep rank 0's
    return history
