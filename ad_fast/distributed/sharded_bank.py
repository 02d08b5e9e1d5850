"""A memory bank split over the ranks of a process group, searched with the exact global top-k."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..ops import MemoryBank
from .collectives import all_gather_cat, all_gather_sizes, block_range
from .group import active, rank, world_size


class ShardedMemoryBank:
    """The rows of one logical bank ``[N, D]`` spread over the ranks: each holds a :class:`~ad_fast.ops.MemoryBank`
    shard (in memory or memory-mapped) and the global row index of each of its rows.

    Every method but :meth:`__len__` and the properties is a collective: all ranks call it, in the same order.
    With ``same_queries=True`` (the default, e.g. every rank scoring the same images) all ranks pass the same
    queries and row indices: each searches its shard once and only the per-shard top-k travel. With
    ``same_queries=False`` the queries may differ per rank (each rank gets the answers to its own; a rank with
    nothing to ask passes an empty query): all ranks' queries are gathered first and every shard searches them all.

    Example (under ``torchrun``)::

        bank = ShardedMemoryBank.from_bank(MemoryBank.load("bank.safetensors", mmap=True))  # rank r maps its slice
        dist, idx = bank.search(queries, k=9)     # == MemoryBank.search on the whole bank, ties by global index
    """

    def __init__(self, shard: MemoryBank, global_index: torch.Tensor, size: int, same_queries: bool = True):
        """Args: shard (this rank's rows), global_index (int64 Tensor[len(shard)], distinct over all ranks, each in
        ``[0, size)``), size (N, the rows over all ranks), same_queries (see the class docstring)."""
        if global_index.dtype != torch.long or global_index.shape != (len(shard),):
            raise ValueError(f"global_index: expected an int64 Tensor[{len(shard)}], got "
                             f"{global_index.dtype} {tuple(global_index.shape)}")
        self.shard = shard
        self.global_index = global_index.to(shard.device)
        self.size = size
        self.same_queries = same_queries
        self._sorted_index, self._order = self.global_index.sort()

    @classmethod
    def from_bank(cls, bank: MemoryBank, copy: bool = True, same_queries: bool = True) -> ShardedMemoryBank:
        """This rank's contiguous block of ``bank``'s rows. ``bank`` must be the same logical bank on every rank
        (e.g. the same file).

        Args:
            copy: copy the block (the whole bank can then be freed); ``False`` keeps a view, for a memory-mapped
                bank: it stays mapped and only the block's pages are ever read.
            same_queries: see the class docstring.
        """
        start, end = block_range(len(bank))
        rows, norms = bank.rows[start:end], bank.sq_norms[start:end]
        if copy:
            rows, norms = rows.clone(), norms.clone()
        shard = MemoryBank.from_rows(rows, bank.metric, norms)
        return cls(shard, torch.arange(start, end, device=bank.device), len(bank), same_queries)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"ShardedMemoryBank(rows={self.size}, shard={len(self.shard)}, dim={self.dim}, dtype={self.dtype})"

    @property
    def dim(self) -> int:
        return self.shard.dim

    @property
    def dtype(self) -> torch.dtype:
        return self.shard.dtype

    @property
    def metric(self) -> str:
        return self.shard.metric

    @property
    def device(self) -> torch.device:
        return self.shard.device

    @property
    def rows(self) -> GlobalRows:
        """``bank.rows[indices]`` gathers rows by global index (collective; see :meth:`take`)."""
        return GlobalRows(self)

    def to(self, device: torch.device | str) -> ShardedMemoryBank:
        """Move the shard (in place; returns self)."""
        self.shard.to(device)
        self.global_index = self.global_index.to(device)
        self._sorted_index, self._order = self._sorted_index.to(device), self._order.to(device)
        return self

    def search(self, query: torch.Tensor, k: int = 1, metric: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact k nearest rows of the whole bank, as :meth:`MemoryBank.search` on the unsharded bank.

        Each rank runs :func:`ad_fast.ops.knn` of every rank's queries against its shard; the per-shard top-k lists
        are exchanged and merged by (distance, global index), so ties keep the lower global index as in one process.

        Args:
            query (Tensor[M, D] or [B, M, D]): the queries (this rank's own with ``same_queries=False``: M may then
                differ per rank, and be 0).
        Returns:
            (distances, global indices): Tensor[..., M, k] each.
        """
        metric = self.metric if metric is None else metric
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.size:
            raise ValueError(f"k: expected an int in [1, {self.size}] (the bank's rows), got {k!r}")
        if query.dim() not in (2, 3) or query.shape[-1] != self.dim:
            raise ValueError(f"query: expected [M, {self.dim}] or [B, M, {self.dim}], got {tuple(query.shape)}")
        flat = query.reshape(-1, self.dim)
        everyone, start = self._all_queries(flat)
        local_k = min(k, len(self.shard))
        if local_k > 0 and everyone.shape[0] > 0:
            dist_, idx = self.shard.search(everyone, local_k, metric)
            idx = self.global_index[idx]
        else:
            dist_ = torch.empty(everyone.shape[0], 0, dtype=_distance_dtype(query.dtype, self.dtype), device=self.device)
            idx = torch.empty(everyone.shape[0], 0, dtype=torch.long, device=self.device)
        largest = metric == "ip"
        pad = k - local_k  # every rank contributes k candidates per query: missing ones can never win
        dist_ = torch.cat([dist_, dist_.new_full((dist_.shape[0], pad), -torch.inf if largest else torch.inf)], 1)
        idx = torch.cat([idx, idx.new_full((idx.shape[0], pad), self.size)], 1)
        mine = slice(start, start + flat.shape[0])
        dists = _gather_same_shape(dist_)  # [world, M_all, k]
        idxs = _gather_same_shape(idx)
        cand_d = dists[:, mine].permute(1, 0, 2).reshape(flat.shape[0], -1 if flat.shape[0] else 0)
        cand_i = idxs[:, mine].permute(1, 0, 2).reshape(flat.shape[0], -1 if flat.shape[0] else 0)
        cand_i, order = cand_i.sort(1)  # (distance, index) order: stable sort by distance after sorting by index
        cand_d = cand_d.gather(1, order)
        cand_d, order = cand_d.sort(dim=1, descending=largest, stable=True)
        cand_i = cand_i.gather(1, order)
        out_shape = (*query.shape[:-1], k)
        return cand_d[:, :k].reshape(out_shape), cand_i[:, :k].reshape(out_shape)

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """float32 rows at global ``indices`` (int64, any shape) -> Tensor[*indices.shape, D]."""
        flat = indices.reshape(-1).to(self.device)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.size):
            raise IndexError(f"indices: expected values in [0, {self.size}), got [{int(flat.min())}, {int(flat.max())}]")
        everyone, start = self._all_queries(flat)
        rows = torch.zeros(everyone.shape[0], self.dim, dtype=torch.float32, device=self.device)
        if len(self.shard):
            pos = torch.searchsorted(self._sorted_index, everyone).clamp_max(len(self.shard) - 1)
            owned = self._sorted_index[pos] == everyone
            rows[owned] = self.shard.rows[self._order[pos[owned]]].float()
        if active() and world_size() > 1:
            dist.all_reduce(rows)  # each row is non-zero on its owner only: the sum is that row, exactly
        return rows[start : start + flat.shape[0]].reshape(*indices.shape, self.dim)

    def _all_queries(self, flat: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(the queries every shard answers, where this rank's start among them)."""
        if self.same_queries:
            return flat, 0
        counts = all_gather_sizes(flat.shape[0], self.device)
        return all_gather_cat(flat), sum(counts[: rank()])

    def gather(self) -> MemoryBank:
        """The whole bank (rows in global order, in the shard's dtype) on every rank; needs memory for all of it."""
        rows = all_gather_cat(self.shard.rows.contiguous())
        norms = all_gather_cat(self.shard.sq_norms.contiguous())
        index = all_gather_cat(self.global_index)
        order = index.argsort()
        return MemoryBank.from_rows(rows[order], self.metric, norms[order])


class GlobalRows:
    """Read-only ``rows[indices]`` of a :class:`ShardedMemoryBank` (a collective gather, float32)."""

    def __init__(self, bank: ShardedMemoryBank):
        self.bank = bank

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        if not isinstance(indices, torch.Tensor) or indices.dtype != torch.long:
            raise TypeError("ShardedMemoryBank.rows: index with an int64 tensor of global row indices")
        return self.bank.take(indices)

    @property
    def device(self) -> torch.device:
        return self.bank.device


def _distance_dtype(query: torch.dtype, bank: torch.dtype) -> torch.dtype:
    """The dtype of :meth:`MemoryBank.search`'s distances for these query and bank dtypes."""
    if bank in (torch.float16, torch.bfloat16):
        return torch.float32 if query == torch.float64 else query
    return bank


def _gather_same_shape(tensor: torch.Tensor) -> torch.Tensor:
    """Stack of every rank's ``tensor`` (same shape everywhere): Tensor[world, *shape]."""
    if not active() or world_size() == 1:
        return tensor[None]
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts)
