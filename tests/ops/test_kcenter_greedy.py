"""ad_fast.ops.kcenter_greedy against a float64 replay of farthest-point picks and the PyTorch reference loop."""

from __future__ import annotations

import pytest
import torch

from ad_fast._extension import has_cuda_ops, has_ops
from ad_fast.ops import kcenter_greedy
from ad_fast.ops.kcenter_greedy import kcenter_greedy_reference, random_projection

BACKENDS = ["reference", pytest.param("kernel", marks=pytest.mark.skipif(not has_ops(), reason="ad_fast._C not built"))]


def assert_farthest_point_picks(z, idx, radii, first: int | None, init=None, rtol: float = 1e-5) -> None:
    """``idx`` is a float64 farthest-point sequence of ``z`` up to float32 near-ties, and ``radii`` its radii.

    Replays the kernel's own picks in float64: every pick after the start must be within ``rtol`` of the farthest
    row (so it IS the oracle's pick wherever no other row comes that close; rows within float32 rounding of each
    other may go either way, depending on the summation order of the CPU's instruction set), and every radius must
    match the float64 coverage radius after that pick to 1e-5 relative.
    """
    z = z.double()
    min_dist = torch.full((z.shape[0],), float("inf"), dtype=torch.float64) if init is None else init.double().clone()
    if init is None:
        assert int(idx[0]) == first
    for t, pick in enumerate(idx.tolist()):
        if t > 0 or init is not None:
            farthest = float(min_dist.max())
            assert float(min_dist[pick]) >= farthest * (1 - rtol), f"pick {t}: row {pick} is not a farthest row"
        min_dist = torch.minimum(min_dist, torch.linalg.vector_norm(z - z[pick], dim=1))
        if radii is not None:
            assert abs(float(radii[t]) - float(min_dist.max())) <= 1e-5 * float(min_dist.max()) + 1e-6, f"radius {t}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n, d, n_select", [(1, 3, 1), (2, 1, 2), (97, 5, 30), (4099, 17, 40), (9000, 128, 25)])
def test_picks_are_farthest_points_without_projection(n, d, n_select, backend):
    gen = torch.Generator().manual_seed(n + d)
    features = torch.randn(n, d, generator=gen)
    idx, radii = kcenter_greedy(
        features, n_select, projection_dim=None, start_index=n // 2, return_radii=True, backend=backend
    )
    assert idx.dtype == torch.long and radii.dtype == torch.float32
    assert_farthest_point_picks(features, idx, radii, n // 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_projection_picks_farthest_points_of_projected_rows(backend):
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(3000, 300, generator=gen)
    idx, radii = kcenter_greedy(features, 60, projection_dim=16, seed=7, return_radii=True, backend=backend)
    projected = features @ random_projection(300, 16, seed=7)
    first = int(torch.randint(3000, (1,), generator=torch.Generator().manual_seed(7)))
    assert_farthest_point_picks(projected, idx, radii, first)
    weight = random_projection(300, 16, seed=7)
    explicit = kcenter_greedy(features, 60, projection=weight, start_index=first, backend=backend)
    assert torch.equal(explicit, idx)


def test_kernel_equals_reference_and_radius_never_increases():
    if not has_ops():
        pytest.skip("ad_fast._C not built")
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(20001, 64, generator=gen)
    idx, radii = kcenter_greedy(features, ratio=0.01, projection_dim=32, seed=3, return_radii=True, backend="kernel")
    idx_ref, radii_ref = kcenter_greedy(
        features, ratio=0.01, projection_dim=32, seed=3, return_radii=True, backend="reference"
    )
    assert idx.shape == (200,)  # int(20001 * 0.01)
    assert torch.equal(idx, idx_ref)
    torch.testing.assert_close(radii, radii_ref, rtol=1e-5, atol=1e-6)
    assert bool((radii[1:] <= radii[:-1]).all())
    assert idx.unique().numel() == 200


@pytest.mark.parametrize("backend", BACKENDS)
def test_init_distances(backend):
    gen = torch.Generator().manual_seed(4)
    features = torch.randn(500, 8, generator=gen)
    init = torch.rand(500, generator=gen) * 3
    idx, radii = kcenter_greedy(
        features, 20, projection_dim=None, init_distances=init, return_radii=True, backend=backend
    )
    assert int(idx[0]) == int(init.argmax())
    assert_farthest_point_picks(features, idx, radii, None, init)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ratio_count_seed_and_edges(backend):
    gen = torch.Generator().manual_seed(5)
    features = torch.randn(205, 10, generator=gen)
    by_ratio = kcenter_greedy(features, ratio=0.1, projection_dim=4, backend=backend)
    by_count = kcenter_greedy(features, n_select=20, projection_dim=4, backend=backend)
    assert torch.equal(by_ratio, by_count)  # int(205 * 0.1) == 20
    assert torch.equal(kcenter_greedy(features, 20, projection_dim=4, backend=backend), by_count)  # same seed
    assert int(kcenter_greedy(features, 3, start_index=17, backend=backend)[0]) == 17
    assert kcenter_greedy(features, 0, backend=backend).shape == (0,)
    assert kcenter_greedy(features[:0], 0, backend=backend).shape == (0,)
    assert torch.equal(kcenter_greedy(features, 205, backend=backend).sort().values, torch.arange(205))
    duplicates = torch.cat([features[:3]] * 4)  # every row repeats: picks stay unique until radius 0
    idx, radii = kcenter_greedy(duplicates, 4, projection_dim=None, start_index=0, return_radii=True, backend=backend)
    assert sorted(idx[:3].tolist()) == [0, 1, 2] and float(radii[2]) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_raise(backend):
    features = torch.randn(50, 6)
    with pytest.raises(ValueError, match="n_select"):
        kcenter_greedy(features, 51, backend=backend)
    with pytest.raises(ValueError, match="n_select/ratio"):
        kcenter_greedy(features, backend=backend)
    with pytest.raises(ValueError, match="n_select/ratio"):
        kcenter_greedy(features, 3, ratio=0.1, backend=backend)
    for ratio in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="ratio"):
            kcenter_greedy(features, ratio=ratio, backend=backend)
    with pytest.raises(ValueError, match="start_index"):
        kcenter_greedy(features, 3, start_index=50, backend=backend)
    with pytest.raises(ValueError, match="projection_dim"):
        kcenter_greedy(features, 3, projection_dim=0, backend=backend)
    with pytest.raises(ValueError, match="projection"):
        kcenter_greedy(features, 3, projection=torch.randn(5, 2), backend=backend)
    with pytest.raises(ValueError, match="init_distances"):
        kcenter_greedy(features, 3, init_distances=torch.rand(49), backend=backend)
    with pytest.raises(ValueError, match="features"):
        kcenter_greedy(torch.randn(50), 3, backend=backend)
    with pytest.raises(TypeError, match="features"):
        kcenter_greedy(features.long(), 3, backend=backend)
    bad = features.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="features"):
        kcenter_greedy(bad, 3, backend=backend)


def clustered_rows(n: int, d: int, clusters: int, seed: int) -> torch.Tensor:
    """Rows in tight, anisotropic clusters: where the kernel skips most rows by the triangle inequality."""
    gen = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(clusters, d, generator=gen)
    spread = torch.linspace(1.0, 0.01, d)
    return centres[torch.randint(clusters, (n,), generator=gen)] + 0.3 * torch.randn(n, d, generator=gen) * spread


@pytest.mark.parametrize("backend", BACKENDS)
def test_min_distances_match_oracle_and_resume(backend):
    """return_min_distances gives each row's distance to its nearest pick; resuming from it continues the
    selection exactly (first pick of the second call = next pick of one long call)."""
    z = clustered_rows(3001, 12, 40, seed=9)
    idx, min_dist = kcenter_greedy(z, 50, projection_dim=None, start_index=5, return_min_distances=True,
                                   backend=backend)
    expected = torch.cdist(z.double(), z[idx].double()).amin(1)
    torch.testing.assert_close(min_dist.double(), expected, rtol=1e-5, atol=1e-5)
    assert float(min_dist[idx].abs().max()) == 0.0
    rest = kcenter_greedy(z, 30, projection_dim=None, init_distances=min_dist, backend=backend)
    whole, radii, final = kcenter_greedy(z, 80, projection_dim=None, start_index=5, return_radii=True,
                                         return_min_distances=True, backend=backend)
    assert torch.equal(torch.cat([idx, rest]), whole)
    assert float(final.max()) == float(radii[-1])
    empty = kcenter_greedy(z, 0, return_min_distances=True, backend=backend)
    assert empty[0].shape == (0,) and bool(torch.isinf(empty[1]).all()) and empty[1].shape == (3001,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n, d, clusters, n_select", [(5003, 16, 30, 400), (20011, 64, 200, 1000)])
def test_clustered_rows_are_farthest_point_picks(n, d, clusters, n_select, backend):
    """Clustered rows, many picks: the picks (Elkan skipping in the kernel) are a full pass's, init or not."""
    if backend == "reference" and n > 10_000:
        pytest.skip("the reference loop is slow at this size; the oracle checks the kernel")
    z = clustered_rows(n, d, clusters, seed=n)
    idx, radii = kcenter_greedy(z, n_select, projection_dim=None, start_index=1, return_radii=True, backend=backend)
    assert_farthest_point_picks(z, idx, radii, 1)
    init = torch.cdist(z, z[:3]).mean(1)  # DMAD's start: mean distance to a few rows, owned by no pick
    idx = kcenter_greedy(z, n_select // 4, projection_dim=None, init_distances=init, backend=backend)
    assert_farthest_point_picks(z, idx, None, None, init)


def test_kernel_ties_and_duplicates_like_a_full_pass():
    """Exact ties (duplicated rows, a lattice): the kernel keeps the first maximum, as the reference loop."""
    if not has_ops():
        pytest.skip("ad_fast._C not built")
    lattice = torch.cartesian_prod(*[torch.arange(6.0)] * 3)  # 216 points, many equal distances
    rows = torch.cat([lattice, lattice[:50], lattice.flip(0)[:20]])
    for start in (0, 7, 250):
        kernel = kcenter_greedy(rows, 230, projection_dim=None, start_index=start, return_radii=True,
                                backend="kernel")
        ref = kcenter_greedy(rows, 230, projection_dim=None, start_index=start, return_radii=True,
                             backend="reference")
        assert torch.equal(kernel[0], ref[0])
        torch.testing.assert_close(kernel[1], ref[1], rtol=1e-6, atol=1e-6)  # summation order differs


def test_large_n_runs_in_seconds():
    """N = 200k rows (already 32-d): the kernel's fused pass, checked against the reference for a few picks."""
    if not has_ops():
        pytest.skip("ad_fast._C not built")
    gen = torch.Generator().manual_seed(6)
    features = torch.randn(200_000, 32, generator=gen)
    idx, radii = kcenter_greedy(features, 100, projection_dim=None, seed=1, return_radii=True, backend="kernel")
    assert idx.unique().numel() == 100 and bool((radii[1:] <= radii[:-1]).all())
    idx_ref = kcenter_greedy(features, 5, projection_dim=None, seed=1, backend="reference")
    assert torch.equal(idx[:5], idx_ref)


def test_kernel_is_independent_of_thread_count_and_opcheck():
    if not has_ops():
        pytest.skip("ad_fast._C not built")
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(9000, 16, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kcenter_greedy(z, 30, projection_dim=None, backend="kernel")
        torch.set_num_threads(max(2, threads))
        many = kcenter_greedy(z, 30, projection_dim=None, backend="kernel")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)
    torch.library.opcheck(torch.ops.ad_fast.kcenter_greedy.default, (z[:300], 7, 4, None))
    torch.library.opcheck(torch.ops.ad_fast.kcenter_greedy.default, (z[:300], 7, -1, torch.rand(300, generator=gen)))
    torch.library.opcheck(torch.ops.ad_fast.kcenter_greedy.default, (z[:300], 0, 0, None))


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and has_cuda_ops()), reason="needs CUDA and the CUDA kernels")
@pytest.mark.parametrize("n, d, n_select", [(1, 3, 1), (97, 5, 30), (70_001, 128, 50)])
def test_cuda_same_indices_as_cpu(n, d, n_select):
    gen = torch.Generator().manual_seed(8)
    features = torch.randn(n, d * 2, generator=gen)
    cpu = kcenter_greedy(features, n_select, projection_dim=d, seed=3, return_radii=True, backend="reference")
    gpu = kcenter_greedy(features.cuda(), n_select, projection_dim=d, seed=3, return_radii=True, backend="kernel")
    assert torch.equal(gpu[0].cpu(), cpu[0])
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=1e-5, atol=1e-6)
    init = torch.rand(n, generator=gen)
    cpu = kcenter_greedy(features, n_select, projection_dim=d, init_distances=init, return_min_distances=True,
                         backend="reference")
    gpu = kcenter_greedy(features.cuda(), n_select, projection_dim=d, init_distances=init.cuda(),
                         return_min_distances=True, backend="kernel")
    assert torch.equal(gpu[0].cpu(), cpu[0])
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ the lazy block kernel against a full pass
def full_pass(z: torch.Tensor, n_select: int, start: int | None = None, init: torch.Tensor | None = None):
    """Greedy k-center by one full pass over all rows per pick, with the kernel's distance arithmetic.

    Each pick's distance to every row comes from a one-pick kernel call (its min-distances: one distance per row,
    nothing pending, nothing skipped); the running minimum and the first-maximum arg-max are exact torch ops. So the
    lazy kernel must give these indices, radii and min-distances bit for bit.
    """
    min_dist = torch.full((z.shape[0],), float("inf")) if init is None else init.clone()
    pick = start if init is None else int(torch.argmax(min_dist))
    picks, radii = [], []
    for _ in range(n_select):
        picks.append(pick)
        min_dist = torch.minimum(min_dist, torch.ops.ad_fast.kcenter_greedy(z.contiguous(), 1, pick, None)[2])
        pick = int(torch.argmax(min_dist))  # first maximum
        radii.append(min_dist[pick])
    return torch.tensor(picks, dtype=torch.long), torch.stack(radii), min_dist


def assert_same_as_full_pass(z, n_select, start=None, init=None) -> None:
    got = kcenter_greedy(z, n_select, projection_dim=None, start_index=start, init_distances=init, return_radii=True,
                         return_min_distances=True, backend="kernel")
    expected = full_pass(z, n_select, start, init)
    for name, a, b in zip(("indices", "radii", "min_dist"), got, expected):
        assert torch.equal(a, b), f"{name} differ from the full pass"


needs_ops = pytest.mark.skipif(not has_ops(), reason="ad_fast._C not built")


@needs_ops
@pytest.mark.parametrize("n, d, n_select", [(1, 3, 1), (2, 5, 2), (7, 4, 7), (200, 16, 200), (769, 9, 150),
                                            (1000, 33, 100), (3001, 128, 350)])
def test_lazy_kernel_is_a_full_pass_bit_for_bit(n, d, n_select):
    """Random rows of odd sizes: one block or less (N < 256), several blocks + 1, N not a multiple of the block
    size, n_select = N, d with a SIMD remainder, and 128-d with helper threads (N * n_select >= 2^20); from a start
    row and from init distances with exact ties."""
    gen = torch.Generator().manual_seed(n * 31 + d)
    z = torch.randn(n, d, generator=gen)
    assert_same_as_full_pass(z, n_select, start=n // 3)
    init = torch.randint(0, 3, (n,), generator=gen).float() * 4  # ties among the largest starting values
    assert_same_as_full_pass(z, n_select, init=init)


@needs_ops
def test_lazy_kernel_exact_ties_equal_the_reference_loop():
    """Integer rows (every squared distance exact in float32 whatever the summation order): duplicated rows and a
    lattice, all rows picked, so late picks are ties at radius 0 (first maximum). Indices equal the reference
    loop's; radii and min-distances equal the full pass's (the reference's torch.sqrt is not always correctly
    rounded in float32: it gives 7.41619873 for sqrt(55), the kernel the nearest float 7.41619825), and the
    reference's to 1 ulp."""
    gen = torch.Generator().manual_seed(11)
    lattice = torch.cartesian_prod(*[torch.arange(-2.0, 3.0)] * 4)  # 625 rows, many equal distances
    rows = torch.cat([lattice, lattice[torch.randperm(625, generator=gen)[:140]],
                      torch.randint(-4, 5, (60, 4), generator=gen).float()])  # 825 rows: duplicates, 4 blocks
    for start, init in ((0, None), (700, None), (None, rows.norm(dim=1).round())):
        kernel = kcenter_greedy(rows, rows.shape[0], projection_dim=None, start_index=start, init_distances=init,
                                return_radii=True, return_min_distances=True, backend="kernel")
        reference = kcenter_greedy_reference(rows, rows.shape[0], projection_dim=None, start_index=start,
                                             init_distances=init, return_radii=True, return_min_distances=True)
        assert torch.equal(kernel[0], reference[0])
        for a, b in zip(kernel[1:], reference[1:]):
            torch.testing.assert_close(a, b, rtol=2**-23, atol=0.0)
    assert_same_as_full_pass(rows, rows.shape[0], init=rows.norm(dim=1).round())


@needs_ops
def test_lazy_kernel_clustered_rows_non_contiguous_and_threads():
    """Clustered rows (the triangle-inequality skip fires), given as a non-contiguous view: a full pass bit for
    bit, from a start row and from DMAD-like init distances, with 1 and 2 threads (helpers or none)."""
    view = clustered_rows(4001, 48, 40, seed=12)[:, ::2]  # every other column: 24-d, strided
    assert not view.is_contiguous()
    init = torch.cdist(view, view[:3]).mean(1)
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            assert_same_as_full_pass(view, 270, start=9)
            assert_same_as_full_pass(view, 270, init=init)
    finally:
        torch.set_num_threads(threads)


@needs_ops
def test_lazy_kernel_pairs_rows_that_skip_with_rows_that_do_not():
    """Rows alternate between tight clusters (tiles of picks skipped by the triangle inequality once a pick lands
    nearby) and wide noise (never skipped), so the kernel's two-row inner loop meets pairs where only one row needs a
    tile and groups of picks only one row needs; 3001 rows leave a block's last row without a partner. Bit for bit
    a full pass, from a start row and from init distances."""
    gen = torch.Generator().manual_seed(21)
    tight = clustered_rows(1501, 16, 5, seed=21)
    wide = 6 * torch.randn(1500, 16, generator=gen)
    rows = torch.empty(3001, 16)
    rows[0::2], rows[1::2] = tight, wide
    assert_same_as_full_pass(rows, 350, start=1)  # 3001 x 350 >= 2^20: with the principal axes' bound
    assert_same_as_full_pass(rows, 350, init=torch.cdist(rows, rows[:4]).mean(1))


@needs_ops
@pytest.mark.parametrize("offset, scale", [(0.0, 1.0), (1000.0, 1e-3), (-3e4, 2.0)])
def test_lazy_kernel_principal_axes_bound_keeps_every_pick(offset, scale):
    """Rows with one dominant direction (the principal axes' bound rules out most picks), far from the origin or
    only a few float32 ulps apart (the bound's rounding allowance is what keeps a pick that is barely closer), with
    exact duplicates: bit for bit a full pass, from a start row and from init distances."""
    gen = torch.Generator().manual_seed(int(abs(offset)) + 5)
    spread = torch.logspace(1, -2, 40)  # variance falls by 10^6 across the columns
    rows = offset + scale * torch.randn(2700, 40, generator=gen) * spread
    rows[2000:2100] = rows[:100]  # exact duplicates: ties at min-distance 0
    assert_same_as_full_pass(rows, 400, start=7)  # 2700 x 400 >= 2^20: with the bound
    assert_same_as_full_pass(rows, 400, init=torch.cdist(rows, rows[:5]).mean(1))


@needs_ops
def test_raw_kernel_zero_columns():
    """Rows of no columns (the raw op; the Python API refuses them): every distance is 0, so after the start row
    each pick is row 0 (first maximum) at radius 0."""
    indices, radii, min_dist = torch.ops.ad_fast.kcenter_greedy(torch.empty(5, 0), 3, 2, None)
    assert indices.tolist() == [2, 0, 0] and radii.tolist() == [0.0] * 3 and min_dist.tolist() == [0.0] * 5
