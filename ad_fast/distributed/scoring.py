"""Data-parallel scoring: a model's ``predict`` over inputs split across the ranks, results in input order."""

from __future__ import annotations

from itertools import accumulate
from typing import Any

import torch
import torch.distributed as dist

from ..results import AnomalyResult
from .group import active, rank, world_size
from .sharded_bank import ShardedMemoryBank


def predict_parallel(model: Any, images: Any, batch_size: int | None = None, **kwargs: Any) -> AnomalyResult:
    """``model.predict`` over ``images`` split across the ranks; every rank gets the whole result, in input order.

    The images (a list/tuple, or Tensor[B, 3, H, W]) are cut into consecutive batches of ``batch_size`` (default:
    one near-equal block per rank); rank r predicts batches r, r + world, ... and the results are gathered and put
    back in input order. Each image is thus scored in the same batch as by ``model.predict`` called batch by batch
    in one process, so the results are bit-identical to that run (batch composition can change the float rounding
    of a backbone). The model must be the same on every rank (loaded from one file, or fitted with the same seed).

    Without a process group it is that one-process run (``model.predict(images)`` when ``batch_size`` is None).
    It runs ``model.predict(images, **kwargs)`` as it is for a single image and for a model with
    :class:`ShardedMemoryBank` banks (whose search is itself collective: every rank scores all images). A
    collective: every rank calls it with the same images.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size: expected None or a positive int, got {batch_size!r}")
    batched = isinstance(images, (list, tuple)) or (isinstance(images, torch.Tensor) and images.dim() == 4)
    world = world_size()
    if not batched or not len(images) or has_sharded_banks(model) or (world == 1 and batch_size is None):
        return model.predict(images, **kwargs)
    count = len(images)
    if batch_size is None:
        bounds = [0, *accumulate(len(part) for part in torch.arange(count).tensor_split(world))]
    else:
        bounds = list(range(0, count, batch_size)) + [count]
    batches = [images[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    local = []
    for batch in batches[rank()::world]:
        result = model.predict(batch, **kwargs)
        if not isinstance(result, AnomalyResult):
            raise TypeError(f"model.predict: expected an AnomalyResult, got {type(result).__name__}")
        local.append(_to_cpu(result))
    gathered: list[list[AnomalyResult]] = [local]
    if world > 1:
        gathered = [[] for _ in range(world)]
        dist.all_gather_object(gathered, local)
    from ..models.base import concat_results  # here: the models import this package (their trainers use DDP)

    parts = [gathered[i % world][i // world] for i in range(len(batches))]
    return concat_results(parts, getattr(model, "_common_size", None))


def data_parallel(model: Any, batch_size: int | None = None) -> Any:
    """``model`` as a :class:`DataParallelScorer` when a process group is active, else ``model`` itself."""
    return DataParallelScorer(model, batch_size) if active() and world_size() > 1 else model


class DataParallelScorer:
    """A model whose ``predict`` is :func:`predict_parallel` (with ``batch_size`` images per rank and batch);
    everything else (``fit``, ``save``, attributes) is the wrapped model's."""

    def __init__(self, model: Any, batch_size: int | None = None):
        self.model = model
        self.batch_size = batch_size

    def predict(self, images: Any, **kwargs: Any) -> AnomalyResult:
        return predict_parallel(self.model, images, self.batch_size, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not set yet (e.g. during copy.deepcopy): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return f"DataParallelScorer({self.model!r}, batch_size={self.batch_size})"


def has_sharded_banks(model: Any) -> bool:
    """Whether any attribute of ``model`` is a :class:`ShardedMemoryBank`."""
    return any(isinstance(value, ShardedMemoryBank) for value in vars(model).values())


def _to_cpu(result: AnomalyResult) -> AnomalyResult:
    def cpu(value: Any) -> Any:
        return value.detach().cpu() if isinstance(value, torch.Tensor) else value

    return AnomalyResult(cpu(result.anomaly_map), cpu(result.pred_score), cpu(result.pred_mask),
                         cpu(result.pred_label), {k: cpu(v) for k, v in result.extras.items()}, cpu(result.raw_score),
                         cpu(result.raw_map))
