"""Fuzz cases of the raw entry points ``torch.ops.ad_fast.*`` (no Python checks in front): each call returns what
the reference returns for the same arguments, or raises an error naming an argument. A crash or an out-of-bounds
read kills the child process running this module (see test_fuzz.py).
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

import ad_fast.ops  # noqa: F401  (loads the library and its fake kernels)
from ad_fast.ops import reference
from ad_fast.ops.pruned_knn import build_projection_index
from cases_ops import FLOATS, dims, tensors
from harness import announce, assert_clear, outcome

ODD = (torch.int64, torch.uint8, torch.bool)
DEVICES = st.sampled_from(["cpu"] * 6 + ["meta"])
INTS = st.one_of(st.integers(-3, 70), st.sampled_from([2**31 - 1, 2**31, 2**32, 2**32 + 8, 2**63 - 1, -(2**63)]))


def on(x, device):
    return x if device == "cpu" else torch.empty_like(x, device="meta")


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def raw_case(name, case, call, reference_call, arguments, compare):
    """The raw call must refuse naming an argument, or return what ``reference_call`` returns (which may itself
    refuse arguments the raw op accepts, e.g. a float64 bank with float32 queries: then nothing is compared)."""
    announce(name, case)
    got, error = outcome(call)
    if error is not None:
        return assert_clear(error, arguments)
    devices = {t.device.type for t in _tensors(case)}
    assert len(devices) <= 1, f"a call mixing devices {devices} returned instead of refusing"
    want, ref_error = outcome(reference_call)
    if ref_error is None:
        compare(got, want)


@given(st.data())
def case_raw_knn(data):
    m, n, d = data.draw(dims(0, 6)), data.draw(dims(0, 20)), data.draw(dims(0, 5))
    query = on(data.draw(tensors((m, d), FLOATS + ODD, special=False)), data.draw(DEVICES))
    bank = on(data.draw(tensors((data.draw(st.sampled_from([n, 0])), data.draw(st.sampled_from([d, d + 1]))),
                                FLOATS + ODD, special=False)), data.draw(DEVICES))
    norms = data.draw(st.sampled_from([None, "right", "short", "float64"]))
    if norms is not None and bank.device.type == "cpu":
        base = (bank.double() ** 2).sum(1) if bank.numel() else torch.zeros(bank.shape[0], dtype=torch.float64)
        norms = {"right": base.float(), "short": base.float()[:-1], "float64": base}[norms]
    elif norms is not None:
        norms = torch.empty(bank.shape[0], device="meta")
    k = data.draw(INTS)
    metric = data.draw(st.sampled_from(["l2", "sqeuclidean", "cosine", "ip", "nope"]))

    def compare(got, want):
        torch.testing.assert_close(got[0].double(), want[0].double(), rtol=1e-3, atol=1e-3)

    raw_case("raw knn", (query, bank, k, metric, norms), lambda: torch.ops.ad_fast.knn(query, bank, k, metric, norms),
             lambda: reference.knn(query, bank, k, metric, bank_sq_norms=norms),
             ["query", "bank", "k", "metric", "bank_sq_norms"], compare)


@given(st.data())
def case_raw_knn_pruned(data):
    m, n, d = data.draw(dims(0, 6)), data.draw(dims(0, 20)), data.draw(dims(0, 5))
    p = data.draw(st.sampled_from([1, 2, max(d, 1)]))
    query = on(data.draw(tensors((m, d), FLOATS + ODD, special=False)), data.draw(DEVICES))
    bank = data.draw(tensors((n, data.draw(st.sampled_from([d, d + 1]))), FLOATS + ODD, special=False))
    good = bank.is_floating_point() and bank.numel() > 0 and bool(torch.isfinite(bank.float()).all())
    index = list(build_projection_index(bank.float(), p)) if good else [torch.zeros(d), torch.eye(p, d),
                                                                         torch.zeros(n, p)]
    if data.draw(st.booleans()):  # one of the index tensors with a wrong dtype or shape
        slot = data.draw(st.integers(0, 2))
        index[slot] = data.draw(st.sampled_from([index[slot].double(), index[slot][..., :-1], index[slot].unsqueeze(0)]))
    bank = on(bank, data.draw(DEVICES))
    metric = data.draw(st.sampled_from(["l2", "sqeuclidean", "cosine", "nope"]))

    def compare(got, want):
        torch.testing.assert_close(got[0].double(), want[0].double(), rtol=1e-3, atol=1e-3)

    raw_case("raw knn_pruned", (query, bank, *index, metric),
             lambda: torch.ops.ad_fast.knn_pruned(query, bank, *index, metric),
             lambda: reference.knn(query, bank, 1, metric),
             ["query", "bank", "centre", "axes", "bank_prefix", "metric"], compare)


@given(st.data())
def case_raw_anomaly_map(data):
    levels = data.draw(st.integers(0, 2))
    batch = data.draw(dims(0, 2))
    dtype = data.draw(st.sampled_from(FLOATS + ODD))
    feats_a, feats_b = [], []
    for _ in range(levels):
        shape = (batch, data.draw(dims(0, 4)), data.draw(dims(0, 5)), data.draw(dims(0, 5)))
        feats_a.append(on(data.draw(tensors(shape, (dtype,), special=False)), data.draw(DEVICES)))
        feats_b.append(on(data.draw(tensors(shape, (dtype,), special=False)), data.draw(DEVICES)))
    out_size = data.draw(st.lists(st.one_of(st.integers(-1, 9), st.just(2**40)), min_size=0, max_size=3))
    weights = data.draw(st.lists(st.floats(-2, 2), min_size=0, max_size=3))
    sigma = data.draw(st.sampled_from([0.0, -1.0, 1.0, 999.0, 1e9, float("nan"), float("inf")]))
    metric = data.draw(st.sampled_from(["cosine", "l2", "x"]))
    raw_case(
        "raw anomaly_map", (feats_a, feats_b, out_size, metric, weights, sigma),
        lambda: torch.ops.ad_fast.anomaly_map(feats_a, feats_b, out_size, metric, weights, sigma),
        lambda: reference.anomaly_map(feats_a, feats_b, tuple(out_size), metric, weights, "sum",
                                      sigma if sigma > 0 else None),
        # an empty list reaches no kernel: the dispatcher itself refuses it ("requires a non-empty list of Tensors")
        ["feats_a", "feats_b", "feature maps", "out_size", "metric", "weights", "blur_sigma", "level",
         "non-empty list of Tensors"],
        lambda got, want: torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-4),
    )


@given(st.data())
def case_raw_hog(data):
    shape = data.draw(st.sampled_from([(1, 1, 32, 32), (2, 3, 17, 40), (0, 1, 16, 16), (1, 2, 16, 16), (1, 1, 0, 8),
                                       (1, 1, 8)]))
    images = on(data.draw(tensors(shape, (torch.uint8, torch.float32, torch.float64, torch.int64), scale=50.0)),
                data.draw(DEVICES))
    cell = data.draw(st.lists(INTS, min_size=0, max_size=3))
    block = data.draw(st.lists(INTS, min_size=0, max_size=3))
    orientations = data.draw(INTS)
    norm = data.draw(st.sampled_from(["L1", "L1-sqrt", "L2", "L2-Hys", "bad"]))
    flags = data.draw(st.booleans()), data.draw(st.booleans())
    raw_case(
        "raw hog", (images, orientations, cell, block, norm, flags),
        lambda: torch.ops.ad_fast.hog(images, orientations, cell, block, norm, *flags),
        lambda: reference.hog(images, orientations, tuple(cell), tuple(block), norm, flags[0], flags[1], False),
        ["images", "orientations", "pixels_per_cell", "cells_per_block", "block_norm", "visualize"],
        lambda got, want: torch.testing.assert_close(got[0], want[0] if flags[1] else want, rtol=1e-4, atol=1e-4),
    )


@given(st.data())
def case_raw_kcenter_greedy(data):
    n, d = data.draw(dims(0, 20)), data.draw(dims(0, 4))
    projected = on(data.draw(tensors((n, d), (torch.float32, torch.float64, torch.int64), special=True)),
                   data.draw(DEVICES))
    init = data.draw(st.sampled_from([None, "ok", "nan", "short", "float64"]))
    if init is not None:
        base = torch.rand(n)
        if init == "nan" and n:
            base[data.draw(st.integers(0, n - 1))] = data.draw(st.sampled_from([float("nan"), -float("inf")]))
        init = on({"ok": base, "nan": base, "short": base[:-1], "float64": base.double()}[init], data.draw(DEVICES))
    n_select, start = data.draw(INTS), data.draw(INTS)

    def reference_call():
        return reference.kcenter_greedy(projected, n_select=n_select, projection_dim=None,
                                        start_index=None if init is not None else start, return_radii=True,
                                        init_distances=init)

    def compare(got, want):
        torch.testing.assert_close(got[1].double(), want[1].double(), rtol=1e-4, atol=1e-5)

    raw_case("raw kcenter_greedy", (projected, n_select, start, init),
             lambda: torch.ops.ad_fast.kcenter_greedy(projected, n_select, start, init), reference_call,
             ["projected", "n_select", "start_index", "init_distances"], compare)


@given(st.data())
def case_raw_alignment(data):
    batch, c, nq, np_ = data.draw(dims(0, 2)), data.draw(dims(0, 4)), data.draw(dims(0, 5)), data.draw(dims(0, 5))
    dtype = data.draw(st.sampled_from(FLOATS + ODD))
    q = on(data.draw(tensors((batch, c, nq), (dtype,))), data.draw(DEVICES))
    k = on(data.draw(tensors((batch, data.draw(st.sampled_from([c, c + 1])), np_), (dtype,))), data.draw(DEVICES))
    v = on(data.draw(tensors((batch, data.draw(dims(0, 3)), data.draw(st.sampled_from([np_, np_ + 1]))), (dtype,))),
           data.draw(DEVICES))
    scale = data.draw(st.sampled_from([1.0, 0.0, -3.0]))
    names = ["q", "k", "v", "channels", "prompt", "batch"]
    low = dtype in (torch.float16, torch.bfloat16)
    tol = 2e-2 if low else 1e-4

    def unflat(x):  # the references take [B, C, H, W]: one row of positions
        return x.unsqueeze(2)

    raw_case("raw soft_align", (q, k, v, scale), lambda: torch.ops.ad_fast.soft_align(q, k, v, scale),
             lambda: reference.soft_align(unflat(q), unflat(k), unflat(v), scale).squeeze(2), names,
             lambda got, want: torch.testing.assert_close(got[0].double(), want.double(), rtol=tol, atol=tol))
    raw_case("raw hard_align_match", (q, k), lambda: torch.ops.ad_fast.hard_align_match(q, k),
             lambda: reference.hard_align(unflat(q), unflat(k), unflat(k), True)[1].squeeze(2).squeeze(1), names,
             lambda got, want: torch.testing.assert_close(got[0].double(), want.double(), rtol=tol, atol=tol))
