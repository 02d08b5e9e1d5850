"""Scale-out on ``torch.distributed`` (launched by ``torchrun``; NCCL on CUDA, gloo on CPU).

- :func:`setup`, :mod:`.ddp`: the one process-group / DDP setup every trainer uses; :func:`save_training_state`
  and :func:`load_training_state`: the one resumable training checkpoint.
- :class:`ShardedMemoryBank`: a memory bank split over the ranks, searched with the exact global top-k;
  :func:`shard_banks`, :func:`save_sharded`, :func:`load_sharded` for DMAD models.
- :func:`kcenter_greedy_sharded`: greedy k-center coreset over rows sharded over the ranks.
- :func:`predict_parallel` / :class:`DataParallelScorer`: images split over the ranks, results in input order.
"""

from . import ddp
from .group import active, is_main, launched, rank, setup, world_size
from .kcenter import kcenter_greedy_sharded
from .scoring import DataParallelScorer, data_parallel, predict_parallel
from .sharded_bank import ShardedMemoryBank
from .sharded_model import load_sharded, save_sharded, shard_banks
from .training_state import load_training_state, save_training_state

__all__ = [
    "DataParallelScorer",
    "ShardedMemoryBank",
    "active",
    "data_parallel",
    "ddp",
    "is_main",
    "kcenter_greedy_sharded",
    "launched",
    "load_sharded",
    "load_training_state",
    "predict_parallel",
    "rank",
    "save_sharded",
    "save_training_state",
    "setup",
    "shard_banks",
    "world_size",
]
