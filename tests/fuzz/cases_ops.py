"""Fuzz cases of the public ops (``ad_fast.ops.*``): kernel and reference agree, or both refuse naming an argument.

Run by test_fuzz.py in a child process (a crash fails that test); not collected on its own (no ``test_`` prefix).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from ad_fast import ops
from harness import announce, assert_clear, check_against_reference, outcome

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
ODD_DTYPES = (torch.int64, torch.uint8, torch.bool)
ANY_VALUE = st.sampled_from([0.0, 1.0, -1.0, 1e-30, 1e30, 3e38, float("nan"), float("inf"), -float("inf")])


@st.composite
def tensors(draw, shape, dtypes=FLOATS, special=True, scale=None):
    """A tensor of ``shape``: random normal values times a drawn scale, sometimes one special value, sometimes
    non-contiguous (a transposed copy or a strided slice)."""
    dtype = draw(st.sampled_from(dtypes))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3])) if scale is None else scale
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    full = list(shape)
    if layout == "strided" and full:
        full[-1] = full[-1] * 2
    x = torch.randn(*full, generator=generator, dtype=torch.float64) * scale
    if dtype == torch.uint8:
        x = (x.abs() * 50).clamp(0, 255)
    if special and x.numel() and draw(st.booleans()) and draw(st.booleans()):
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(ANY_VALUE)
    if dtype.is_floating_point:
        x = x.to(dtype)
    else:
        x = x.nan_to_num(0, 0, 0).clamp(-1e9, 1e9).to(dtype)
    if layout == "strided" and shape:
        x = x[..., ::2]
    elif layout == "transposed" and len(shape) >= 2:
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x


def dims(low=0, high=6):
    return st.integers(low, high)


def close(rtol, atol):
    def compare(got, want):
        got = got if isinstance(got, (tuple, list)) else (got,)
        want = want if isinstance(want, (tuple, list)) else (want,)
        for g, w in zip(got, want):
            torch.testing.assert_close(g.double(), w.double(), rtol=rtol, atol=atol, equal_nan=False)
    return compare


# --- knn --------------------------------------------------------------------------------------------------------
@given(st.data())
def case_knn(data):
    m, n, d = data.draw(dims(0, 9)), data.draw(dims(0, 40)), data.draw(dims(0, 7))
    query_shape = (data.draw(dims(1, 2)), m, d) if data.draw(st.booleans()) else (m, d)
    query = data.draw(tensors(query_shape, FLOATS + ODD_DTYPES))
    bank = data.draw(tensors((n, d), (query.dtype, torch.float16, torch.bfloat16, torch.float64)))
    k = data.draw(st.integers(-1, n + 1))
    metric = data.draw(st.sampled_from(["l2", "sqeuclidean", "cosine", "ip", "L2", ""]))
    norms = None
    if data.draw(st.booleans()):
        norms = (bank.double() ** 2).sum(1).float() if bank.is_floating_point() else torch.zeros(n)
        norms = data.draw(st.sampled_from([norms, norms[:-1], norms.double()]))
    case = dict(query=query, bank=bank, k=k, metric=metric, bank_sq_norms=norms)

    def compare(got, want):
        (dist, idx), (ref_dist, ref_idx) = got, want
        assert dist.shape == ref_dist.shape and idx.shape == ref_idx.shape and idx.dtype == torch.long
        scale = max(1.0, float(ref_dist.abs().max())) if ref_dist.numel() else 1.0
        tol = 2e-2 if torch.float16 in (query.dtype, bank.dtype) or torch.bfloat16 in (query.dtype, bank.dtype) else 1e-4
        torch.testing.assert_close(dist.double(), ref_dist.double(), rtol=tol, atol=tol * scale)
        assert bool(((idx >= 0) & (idx < n)).all())

    check_against_reference(
        "knn", case, lambda: ops.knn(**case, backend="kernel"), lambda: ops.knn(**case, backend="reference"),
        ["query", "bank", "k", "metric", "bank_sq_norms"], compare,
    )


# --- anomaly_map ------------------------------------------------------------------------------------------------
@given(st.data())
def case_anomaly_map(data):
    levels = data.draw(st.integers(0, 3))
    batch = data.draw(dims(0, 2))
    dtype = data.draw(st.sampled_from(FLOATS + (torch.int64,)))
    feats_a, feats_b = [], []
    for _ in range(levels):
        shape = (batch, data.draw(dims(0, 5)), data.draw(dims(0, 6)), data.draw(dims(0, 6)))
        feats_a.append(data.draw(tensors(shape, (dtype,))))
        other = shape if data.draw(st.integers(0, 9)) else (batch, shape[1] + 1, *shape[2:])
        feats_b.append(data.draw(tensors(other, (dtype,))))
    out_size = data.draw(st.one_of(dims(0, 12), st.tuples(dims(0, 12), dims(1, 12)), st.none(), st.just("8")))
    metric = data.draw(st.sampled_from(["cosine", "l2", "l1"]))
    weights = data.draw(st.one_of(st.none(), st.lists(st.floats(-2, 2, allow_nan=False), min_size=0, max_size=4)))
    reduce = data.draw(st.sampled_from(["sum", "mean", "max"]))
    blur = data.draw(st.sampled_from([None, 0.5, 1.0, 4.0, 0.0, -1.0, float("nan"), float("inf"), 999.0, 2000.0]))
    case = dict(feats_a=feats_a, feats_b=feats_b, out_size=out_size, metric=metric, weights=weights, reduce=reduce,
                blur_sigma=blur, return_score=data.draw(st.booleans()))
    check_against_reference(
        "anomaly_map", case, lambda: ops.anomaly_map(**case, backend="kernel"),
        lambda: ops.anomaly_map(**case, backend="reference"),
        ["feats_a", "feats_b", "out_size", "metric", "weights", "reduce", "blur_sigma"],
        close(rtol=2e-3 if dtype in (torch.float16, torch.bfloat16) else 1e-4, atol=1e-4),
    )


# --- hog --------------------------------------------------------------------------------------------------------
@given(st.data())
def case_hog(data):
    shape = (data.draw(dims(0, 2)), data.draw(st.sampled_from([1, 2, 3])), data.draw(dims(0, 40)),
             data.draw(dims(0, 40)))
    images = data.draw(tensors(shape, (torch.uint8, torch.float32, torch.float64, torch.float16, torch.int64),
                               scale=100.0))
    cell = data.draw(st.one_of(st.integers(-1, 12), st.tuples(st.integers(0, 12), st.integers(1, 2**33))))
    block = data.draw(st.one_of(st.integers(0, 4), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    case = dict(images=images, orientations=data.draw(st.integers(0, 200)), pixels_per_cell=cell,
                cells_per_block=block, block_norm=data.draw(st.sampled_from(["L1", "L1-sqrt", "L2", "L2-Hys", "l2"])),
                transform_sqrt=data.draw(st.booleans()), visualize=data.draw(st.booleans()))

    def compare(got, want):
        got = got if isinstance(got, tuple) else (got,)
        want = want if isinstance(want, tuple) else (want,)
        torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
        if len(got) == 2:
            peak = float(want[1].abs().max()) if want[1].numel() else 0.0
            torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-3 * max(peak, 1e-6))

    check_against_reference(
        "hog", case, lambda: ops.hog(**case, backend="kernel"), lambda: ops.hog(**case, backend="reference"),
        ["images", "orientations", "pixels_per_cell", "cells_per_block", "block_norm", "visualize"], compare,
    )


# --- soft_align / hard_align ------------------------------------------------------------------------------------
@st.composite
def alignment_inputs(draw):
    batch, cqk, cv = draw(dims(0, 2)), draw(dims(0, 5)), draw(dims(0, 4))
    hq, wq, hp, wp = draw(dims(0, 4)), draw(dims(0, 4)), draw(dims(0, 4)), draw(dims(0, 4))
    dtype = draw(st.sampled_from(FLOATS + (torch.int64,)))
    prompts = draw(st.sampled_from([None, 1, 2]))
    k_shape = (batch, cqk, hp, wp) if prompts is None else (batch, prompts, cqk, hp, wp)
    v_shape = (batch, cv, hp, wp) if prompts is None else (batch, prompts, cv, hp, wp)
    if draw(st.integers(0, 9)) == 0:
        v_shape = v_shape[:-1] + (v_shape[-1] + 1,)
    return (draw(tensors((batch, cqk, hq, wq), (dtype,))), draw(tensors(k_shape, (dtype,))),
            draw(tensors(v_shape, (dtype,))))


@given(alignment_inputs(), st.sampled_from([1.0, 0.0, -0.5, 1e3]))
def case_soft_align(inputs, scale):
    q, k, v = inputs
    low = q.dtype in (torch.float16, torch.bfloat16)
    check_against_reference(
        "soft_align", (q, k, v, scale), lambda: ops.soft_align(q, k, v, scale, backend="kernel"),
        lambda: ops.soft_align(q, k, v, scale, backend="reference"), ["q", "k", "v"],
        close(rtol=2e-2 if low else 1e-4, atol=2e-2 if low else 1e-4),
    )


@given(alignment_inputs())
def case_hard_align(inputs):
    q, k, v = inputs
    low = q.dtype in (torch.float16, torch.bfloat16)

    def compare(got, want):  # positions whose best similarities tie within rounding may pick either: compare sims
        torch.testing.assert_close(got[1], want[1], rtol=1e-2 if low else 1e-5, atol=1e-2 if low else 1e-5)
        assert got[0].shape == want[0].shape

    check_against_reference(
        "hard_align", (q, k, v), lambda: ops.hard_align(q, k, v, True, backend="kernel"),
        lambda: ops.hard_align(q, k, v, True, backend="reference"), ["q", "k", "v"], compare,
    )


# --- kcenter_greedy ---------------------------------------------------------------------------------------------
@given(st.data())
def case_kcenter_greedy(data):
    n, d = data.draw(dims(0, 30)), data.draw(dims(0, 6))
    features = data.draw(tensors((n, d), FLOATS + (torch.int64,)))
    count = data.draw(st.sampled_from(["n_select", "ratio", "both", "neither"]))
    kwargs = {}
    if count in ("n_select", "both"):
        kwargs["n_select"] = data.draw(st.integers(-1, n + 1))
    if count in ("ratio", "both"):
        kwargs["ratio"] = data.draw(st.sampled_from([0.0, 0.1, 0.5, 1.0, 1.5, float("nan")]))
    kwargs["projection_dim"] = data.draw(st.sampled_from([None, 0, 2, 128]))
    start = data.draw(st.sampled_from(["none", "start", "init"]))
    if start == "start":
        kwargs["start_index"] = data.draw(st.integers(-1, n))
    elif start == "init":
        kwargs["init_distances"] = data.draw(tensors((n,), (torch.float32, torch.float64)))
    kwargs["return_radii"] = True

    def compare(got, want):
        (idx, radii), (ref_idx, ref_radii) = got, want
        assert idx.shape == ref_idx.shape
        torch.testing.assert_close(radii.double(), ref_radii.double(), rtol=1e-4, atol=1e-5)

    check_against_reference(
        "kcenter_greedy", (features, kwargs), lambda: ops.kcenter_greedy(features, **kwargs, backend="kernel"),
        lambda: ops.kcenter_greedy(features, **kwargs, backend="reference"),
        ["features", "n_select", "ratio", "projection_dim", "start_index", "init_distances"], compare,
    )


# --- pure-PyTorch ops and MemoryBank: no kernel twin, must return or refuse clearly ---------------------------------
@given(st.data())
def case_gaussian_blur(data):
    x = data.draw(tensors((data.draw(dims(0, 2)), data.draw(dims(0, 2)), data.draw(dims(1, 9)), data.draw(dims(1, 9)))))
    sigma = data.draw(st.sampled_from([0.5, 3.0, 1000.0, 0.0, -1.0, float("nan"), 1e9, "2"]))
    announce("gaussian_blur", (x.shape, sigma))
    out, error = outcome(lambda: ops.gaussian_blur(x, sigma))
    if error is not None:
        assert_clear(error, ["sigma", "x"])
    else:
        assert out.shape == x.shape


@given(st.data())
def case_memory_bank(data):
    dim = data.draw(dims(1, 5))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float16, torch.float64, torch.bfloat16]))
    rows = data.draw(tensors((data.draw(dims(0, 12)), data.draw(st.sampled_from([dim, dim + 1])))))
    query = data.draw(st.one_of(tensors((data.draw(dims(0, 4)), dim)), st.just(np.zeros((2, dim), np.float32))))
    k = data.draw(st.integers(0, 4))
    announce("memory_bank", (dtype, rows.shape, k))
    bank = ops.MemoryBank(dim, dtype)
    added, error = outcome(lambda: bank.add(rows))
    if error is not None:
        return assert_clear(error, ["rows"])
    got, error = outcome(lambda: bank.search(query, k))
    if error is not None:
        return assert_clear(error, ["query", "bank", "k"])
    with ops.use_backend("reference"):
        want = bank.search(query, k)
    scale = max(1.0, float(want[0].abs().max())) if want[0].numel() else 1.0
    torch.testing.assert_close(got[0].double(), want[0].double(), rtol=2e-2, atol=2e-2 * scale)
    assert math.isfinite(float(got[0].double().sum())) or got[0].numel() == 0
