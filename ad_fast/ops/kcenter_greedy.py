"""Greedy k-center (farthest-point) coreset selection, PatchCore's memory-bank subsampling."""

from __future__ import annotations

import torch

from .._extension import has_ops
from ._backend import use_kernel
from ._validate import FLOAT_DTYPES, check_same_device, check_tensor


def _count(n_rows: int, n_select: int | None, ratio: float | None) -> int:
    """Number of rows to select: ``n_select``, or ``int(n_rows * ratio)`` (truncation, as PatchCore)."""
    if (n_select is None) == (ratio is None):
        got = "both" if n_select is not None else "neither"
        raise ValueError(f"n_select/ratio: expected exactly one of them, got {got}")
    if n_select is not None:
        if isinstance(n_select, bool) or not isinstance(n_select, int) or n_select < 0:
            raise ValueError(f"n_select: expected a non-negative int, got {n_select!r}")
        if n_select > n_rows:
            raise ValueError(f"n_select: expected at most the {n_rows} rows of features, got {n_select}")
        return n_select
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio: expected a number in (0, 1], got {ratio!r}")
    return int(n_rows * ratio)


def random_projection(dim_in: int, dim_out: int, seed: int = 0) -> torch.Tensor:
    """Gaussian Johnson-Lindenstrauss projection ``[dim_in, dim_out]``, entries N(0, 1/dim_out), float32, CPU.

    Drawn from a CPU ``torch.Generator`` seeded with ``seed``, so every device sees the same matrix.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(dim_in, dim_out, generator=generator) / dim_out**0.5


def _project(
    features: torch.Tensor, projection_dim: int | None, projection: torch.Tensor | None, seed: int
) -> torch.Tensor:
    """Rows to run the greedy search on: ``features @ W`` in float32, or the features themselves."""
    dim = features.shape[1]
    if projection is not None:
        check_tensor(projection, "projection", ndim=2, dtypes=FLOAT_DTYPES)
        if projection.shape[0] != dim:
            raise ValueError(
                f"projection: expected {dim} rows like features' columns, got shape {tuple(projection.shape)}"
            )
        weight = projection.to(features.device, torch.float32)
    elif projection_dim is None or projection_dim >= dim:
        return features.to(torch.float32).contiguous()
    else:
        weight = random_projection(dim, projection_dim, seed).to(features.device)
    return (features.to(torch.float32) @ weight).contiguous()


def _validated(
    features: torch.Tensor,
    n_select: int | None,
    ratio: float | None,
    projection_dim: int | None,
    start_index: int | None,
    init_distances: torch.Tensor | None,
) -> int:
    check_tensor(features, "features", ndim=2, dtypes=FLOAT_DTYPES, allow_empty=True, finite=True)
    if features.shape[1] == 0:
        raise ValueError(f"features: expected at least one column, got shape {tuple(features.shape)}")
    count = _count(features.shape[0], n_select, ratio)
    if projection_dim is not None and (
        isinstance(projection_dim, bool) or not isinstance(projection_dim, int) or projection_dim < 1
    ):
        raise ValueError(f"projection_dim: expected None or a positive int, got {projection_dim!r}")
    if start_index is not None:
        if init_distances is not None:
            raise ValueError("start_index: cannot be combined with init_distances")
        n_rows = features.shape[0]
        if isinstance(start_index, bool) or not isinstance(start_index, int) or not 0 <= start_index < n_rows:
            raise ValueError(f"start_index: expected an int in [0, {features.shape[0]}), got {start_index!r}")
    if init_distances is not None:
        check_tensor(init_distances, "init_distances", ndim=1, dtypes=FLOAT_DTYPES, allow_empty=True, finite=True)
        check_same_device({"features": features, "init_distances": init_distances})
        if init_distances.shape[0] != features.shape[0]:
            raise ValueError(f"init_distances: expected {features.shape[0]} values, got {init_distances.shape[0]}")
    return count


def _start(n_rows: int, start_index: int | None, seed: int) -> int:
    if start_index is not None:
        return start_index
    return int(torch.randint(n_rows, (1,), generator=torch.Generator().manual_seed(seed)))


def kcenter_greedy_reference(
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
    return_min_distances: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Per-iteration PyTorch loop version of :func:`kcenter_greedy` (same arguments and results)."""
    count = _validated(features, n_select, ratio, projection_dim, start_index, init_distances)
    device = features.device
    if init_distances is None:
        min_dist = torch.full((features.shape[0],), float("inf"), device=device)
    else:
        min_dist = init_distances.to(torch.float32).clone()
    if count == 0:
        empty = torch.empty(0, dtype=torch.long, device=device), torch.empty(0, dtype=torch.float32, device=device)
        return _outputs(*empty, min_dist, return_radii, return_min_distances)
    z = _project(features, projection_dim, projection, seed)
    center = _start(z.shape[0], start_index, seed) if init_distances is None else int(torch.argmax(min_dist))
    selected, radii = [], []
    for _ in range(count):
        selected.append(center)
        dist = ((z - z[center]) ** 2).sum(1).sqrt()
        min_dist = torch.minimum(min_dist, dist)
        center = int(torch.argmax(min_dist))
        radii.append(min_dist[center])
    indices = torch.tensor(selected, dtype=torch.long, device=device)
    return _outputs(indices, torch.stack(radii), min_dist, return_radii, return_min_distances)


def _outputs(indices: torch.Tensor, radii: torch.Tensor, min_dist: torch.Tensor, return_radii: bool,
             return_min_distances: bool) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``indices``, then ``radii`` and ``min_dist`` when asked for, in that order."""
    extra = ([radii] if return_radii else []) + ([min_dist] if return_min_distances else [])
    return (indices, *extra) if extra else indices


def kcenter_greedy(
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
    return_min_distances: bool = False,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Greedy k-center coreset: each pick is the row farthest from every row picked before it.

    Procedure (PatchCore's ``KCenterGreedy``): rows are projected to ``projection_dim`` with a Gaussian
    Johnson-Lindenstrauss matrix (:func:`random_projection`, seeded by ``seed``; skipped when
    ``projection_dim`` is None or >= D; or pass ``projection`` explicitly, e.g. PatchCore's ``nn.Linear``
    weight transposed). The first pick is ``start_index`` (default: a row drawn with ``seed``); each
    later pick is the argmax (first on ties) of the running Euclidean min-distance of every row to the
    picked set. With ``init_distances`` (e.g. DMAD's mean distance to a few random rows) the running
    min-distance starts from it and the first pick is its argmax. Same arguments give the same indices on
    CPU and CUDA (all random draws use a CPU generator); indices are in selection order.

    Kernels: CUDA runs one fused pass over all rows per pick. The CPU kernel is lazy per block of 256 rows: a
    heap of the blocks' (stale, hence upper-bound) maximum min-distances yields each pick once the top block is
    brought up to date, a block takes all its pending picks at once from cache, helper threads update lagging
    blocks meanwhile, and the rest is flushed at the end. A row skips a pick without its distance where a bound
    proves it no closer: the triangle inequality, or (large selections) the distance of their coordinates on
    the rows' 8 leading principal axes, which rules out most pairs on patch features. Its indices, radii and
    min-distances are bit for bit those of one full pass per pick (same float32 distances, ties to the first
    maximum).

    Args:
        features (Tensor[N, D]): rows to subsample; any float dtype (projected in float32).
        n_select (int) or ratio (float in (0, 1]): how many rows; ``ratio`` gives ``int(N * ratio)``.
        projection_dim (int or None): JL target dimension. Default 128.
        seed (int): seed of the projection and of the default start row.
        start_index (int, optional): first pick.
        return_radii (bool): also return the coverage radius (max over rows of the min-distance to the
            picked set, in projected space) after each pick; it never increases.
        projection (Tensor[D, d], optional): explicit projection matrix (overrides ``projection_dim``).
        init_distances (Tensor[N], optional): initial running min-distances (exclusive with ``start_index``).
        return_min_distances (bool): also return every row's running min-distance after the last pick
            (float32 Tensor[N], projected space; what a later call resumes from through ``init_distances``).
        backend (None | "auto" | "kernel" | "reference"): overrides the global choice (see ``ad_fast.ops``).

    Returns:
        int64 Tensor[n_select] of row indices, followed by float32 Tensor[n_select] radii when ``return_radii``
        and float32 Tensor[N] min-distances when ``return_min_distances``.

    Raises:
        ValueError: neither or both of n_select/ratio, ``n_select > N``, bad ratio/start_index, NaN/Inf.
    """
    count = _validated(features, n_select, ratio, projection_dim, start_index, init_distances)
    if count == 0 or not use_kernel("kcenter_greedy", features.device, backend):
        return kcenter_greedy_reference(
            features, n_select, ratio, projection_dim, seed, start_index, return_radii,
            projection=projection, init_distances=init_distances, return_min_distances=return_min_distances,
        )
    z = _project(features, projection_dim, projection, seed)
    if init_distances is None:
        start, init = _start(z.shape[0], start_index, seed), None
    else:
        start, init = -1, init_distances.to(torch.float32).contiguous()
    indices, radii, min_dist = torch.ops.ad_fast.kcenter_greedy(z, count, start, init)
    return _outputs(indices, radii, min_dist, return_radii, return_min_distances)


if has_ops() and hasattr(torch.ops.ad_fast, "kcenter_greedy"):

    @torch.library.register_fake("ad_fast::kcenter_greedy")
    def _kcenter_greedy_fake(projected, n_select, start_index, init_distances):
        if init_distances is not None:  # a raw call mixing a meta tensor with a real one lands here
            check_same_device({"projected": projected, "init_distances": init_distances})
        torch._check(projected.dim() == 2, lambda: "projected must be 2-d")
        torch._check(0 <= n_select <= projected.shape[0], lambda: "n_select must be in [0, N]")
        return (
            projected.new_empty(n_select, dtype=torch.long),
            projected.new_empty(n_select, dtype=torch.float32),
            projected.new_empty(projected.shape[0], dtype=torch.float32),
        )
