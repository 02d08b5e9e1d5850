"""Greedy k-center coreset over rows sharded over the ranks: the picks of :func:`ad_fast.ops.kcenter_greedy`."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..ops.kcenter_greedy import _count, _project, _start
from ..ops._validate import FLOAT_DTYPES, check_tensor
from .collectives import all_gather_sizes
from .group import active, rank, world_size


def kcenter_greedy_sharded(
    features: torch.Tensor,
    n_select: int | None = None,
    ratio: float | None = None,
    projection_dim: int | None = 128,
    seed: int = 0,
    start_index: int | None = None,
    return_radii: bool = False,
    *,
    projection: torch.Tensor | None = None,
    init_distances: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """:func:`ad_fast.ops.kcenter_greedy` of the rows of all ranks, each rank holding a block of them.

    The logical input is the concatenation of every rank's ``features`` in rank order (global index = offset of
    the rank's block + local index). Each rank projects its rows and keeps their running min-distance to the
    picked set; per pick, every rank offers its farthest row (value, global index, projected row) and all ranks
    take the farthest of the offers, ties by the lower global index (the single-process argmax takes the first).
    One ``all_gather`` of ``world x (projection_dim + 2)`` numbers per pick; memory per rank: its block only.

    Args: as :func:`ad_fast.ops.kcenter_greedy`, with ``features`` (Tensor[n_r, D]) and ``init_distances``
        (Tensor[n_r]) this rank's block; ``n_select``, ``ratio``, ``start_index`` refer to all rows. A collective:
        every rank calls it with the same other arguments.
    Returns:
        int64 Tensor[n_select] of global row indices in pick order (and float32 radii), the same on every rank.
    """
    check_tensor(features, "features", ndim=2, dtypes=FLOAT_DTYPES, allow_empty=True, finite=True)
    sizes = all_gather_sizes(features.shape[0], features.device)
    total, offset = sum(sizes), sum(sizes[: rank()])
    count = _count(total, n_select, ratio)
    device = features.device
    if count == 0:
        empty = torch.empty(0, dtype=torch.long, device=device), torch.empty(0, dtype=torch.float32, device=device)
        return empty if return_radii else empty[0]
    if start_index is not None and init_distances is not None:
        raise ValueError("start_index: cannot be combined with init_distances")
    z = _project(features, projection_dim, projection, seed)
    if init_distances is None:
        min_dist = torch.full((z.shape[0],), float("inf"), device=device)
        if start_index is not None and not (isinstance(start_index, int) and 0 <= start_index < total):
            raise ValueError(f"start_index: expected an int in [0, {total}), got {start_index!r}")
        center = _start(total, start_index, seed)
        center_row = _row_of(z, center - offset)
    else:
        check_tensor(init_distances, "init_distances", ndim=1, dtypes=FLOAT_DTYPES, allow_empty=True, finite=True)
        if init_distances.shape[0] != z.shape[0]:
            raise ValueError(f"init_distances: expected {z.shape[0]} values (this rank's rows), got "
                             f"{init_distances.shape[0]}")
        min_dist = init_distances.to(device, torch.float32).clone()
        _, center, center_row = _farthest(z, min_dist, offset)
    selected, radii = [], []
    for _ in range(count):
        selected.append(center)
        min_dist = torch.minimum(min_dist, ((z - center_row) ** 2).sum(1).sqrt())
        radius, center, center_row = _farthest(z, min_dist, offset)
        radii.append(radius)
    indices = torch.tensor(selected, dtype=torch.long, device=device)
    radii_t = torch.tensor(radii, dtype=torch.float32, device=device)
    return (indices, radii_t) if return_radii else indices


def _row_of(z: torch.Tensor, local: int) -> torch.Tensor:
    """Row ``local`` of the rank that holds it (``0 <= local < len(z)`` there), on every rank (exact: a sum of the
    row and zeros)."""
    row = torch.zeros(z.shape[1], dtype=z.dtype, device=z.device)
    if 0 <= local < z.shape[0]:
        row += z[local]
    if active() and world_size() > 1:
        dist.all_reduce(row)
    return row


def _farthest(z: torch.Tensor, min_dist: torch.Tensor, offset: int) -> tuple[float, int, torch.Tensor]:
    """(running min-distance, global index, projected row) of the farthest row over all ranks; ties: lower index."""
    offer = torch.full((2 + z.shape[1],), -torch.inf, dtype=torch.float64, device=z.device)
    if z.shape[0]:
        local = int(torch.argmax(min_dist))
        offer[0], offer[1], offer[2:] = min_dist[local].double(), offset + local, z[local].double()
    if active() and world_size() > 1:
        offers = [torch.empty_like(offer) for _ in range(world_size())]
        dist.all_gather(offers, offer)
        offer = max(offers, key=lambda o: (float(o[0]), -float(o[1])))
    return float(offer[0]), int(offer[1]), offer[2:].to(z.dtype)
