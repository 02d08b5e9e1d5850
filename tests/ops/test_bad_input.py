"""Inputs that used to crash the process or return a silently wrong answer (issue 20): each op now either returns
the reference's answer or raises a clear error naming the argument. Crash-prone calls run in a child process."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ad_fast import ops
from ad_fast.ops import MemoryBank
from isolated import raised_each

BACKENDS = ("kernel", "reference")


# --- crashes ----------------------------------------------------------------------------------------------------
def test_raw_ops_refuse_what_crashed_or_read_out_of_bounds():
    """Each call used to kill the process (SIGFPE), read a wrong argument silently or out of bounds, or return
    uninitialised memory; each now raises an error naming the argument (all in one child process)."""
    hog = 'torch.ops.ad_fast.hog(torch.zeros(1, 1, 64, 64), 9, {}, {}, "L2", False, False)'
    meta = 'device="meta"'
    calls = {
        "hog cell 2**32": hog.format("[2**32, 8]", "[1, 1]"),
        "hog cell 2**32 + 8": hog.format("[2**32 + 8, 8]", "[1, 1]"),
        "hog cell 2**31": hog.format("[8, 2**31]", "[1, 1]"),
        "hog block 2**32 + 1": hog.format("[8, 8]", "[2**32 + 1, 1]"),
        "kcenter nan": 'torch.ops.ad_fast.kcenter_greedy(torch.randn(10, 4), 3, 0, torch.full((10,), float("nan")))',
        "kcenter -inf": 'torch.ops.ad_fast.kcenter_greedy(torch.randn(10, 4), 3, 0, torch.full((10,), -float("inf")))',
        "knn meta bank": f'torch.ops.ad_fast.knn(torch.randn(3, 5), torch.empty(4, 5, {meta}), 2, "l2", None)',
        "knn meta norms": f'torch.ops.ad_fast.knn(torch.randn(3, 5), torch.randn(4, 5), 2, "l2", torch.empty(4, {meta}))',
        "anomaly_map meta": f'torch.ops.ad_fast.anomaly_map([torch.rand(1, 2, 3, 3)], [torch.empty(1, 2, 3, 3, {meta})], '
                            '[4, 4], "cosine", [1.0], 0.0)',
        "soft_align meta": f'torch.ops.ad_fast.soft_align(torch.randn(1, 2, 3), torch.empty(1, 2, 4, {meta}), '
                           'torch.randn(1, 2, 4), 1.0)',
        "hard_align meta": f'torch.ops.ad_fast.hard_align_match(torch.randn(1, 2, 3), torch.empty(1, 2, 4, {meta}))',
        "kcenter meta": f'torch.ops.ad_fast.kcenter_greedy(torch.randn(10, 4), 3, -1, torch.empty(10, {meta}))',
    }
    outcomes = raised_each("import torch, ad_fast.ops", calls)
    for name, must_name in [("hog cell 2**32", "pixels_per_cell"), ("hog cell 2**32 + 8", "pixels_per_cell"),
                            ("hog cell 2**31", "pixels_per_cell"), ("hog block 2**32 + 1", "cells_per_block"),
                            ("kcenter nan", "init_distances"), ("kcenter -inf", "init_distances")]:
        assert must_name in outcomes[name], (name, outcomes[name])
    for name in [n for n in calls if n.endswith("meta") or n.endswith("meta bank") or n.endswith("meta norms")]:
        assert "meta" in outcomes[name] and "cpu" in outcomes[name], (name, outcomes[name])


# --- silent wrong answers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_anomaly_map_refuses_a_blur_wider_than_the_limit(backend):
    a, b = torch.rand(1, 4, 4, 4), torch.rand(1, 4, 4, 4)
    with pytest.raises(ValueError, match="blur_sigma"):
        ops.anomaly_map(a, b, 16, blur_sigma=1e9, backend=backend)


def test_anomaly_map_widest_blur_is_flat_and_kernel_matches_reference():
    a, b = torch.rand(2, 3, 5, 5), torch.rand(2, 3, 5, 5)
    kernel = ops.anomaly_map(a, b, 16, metric="l2", blur_sigma=1000.0, backend="kernel")
    reference = ops.anomaly_map(a, b, 16, metric="l2", blur_sigma=1000.0, backend="reference")
    torch.testing.assert_close(kernel, reference, rtol=1e-5, atol=1e-5)
    # sigma = 1000 over a 16-pixel map: the taps (truncated at 4 sigma) fold over the reflected map's period of 30
    # almost evenly, so every output pixel is the map's mean within 1% (a property, not a stored value).
    unblurred = ops.anomaly_map(a, b, 16, metric="l2", backend="reference")
    mean = unblurred.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(kernel, mean.expand_as(kernel), rtol=1e-2, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1e19, 1e30, 3e38])
def test_anomaly_map_cosine_of_huge_features_is_the_true_cosine(backend, scale):
    a = torch.zeros(1, 2, 1, 1)
    b = torch.zeros(1, 2, 1, 1)
    a[0, :, 0, 0] = torch.tensor([scale, 0.0])
    b[0, :, 0, 0] = torch.tensor([scale / 2, scale / 2])  # 45 degrees: 1 - cos = 1 - 1/sqrt(2)
    out = ops.anomaly_map(a, b, 1, metric="cosine", backend=backend)
    assert out.item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "sqeuclidean"])
def test_knn_is_exact_under_a_large_common_offset(backend, metric):
    generator = torch.Generator().manual_seed(0)
    offset = 1e4 * torch.randn(32, generator=generator)
    bank = offset + torch.randn(2000, 32, generator=generator)
    query = offset + torch.randn(200, 32, generator=generator)
    dist, idx = ops.knn(query, bank, 3, metric, backend=backend)
    # Oracle: float64 differences of the float32 rows, no cancellation.
    d2 = ((query.double()[:, None, :] - bank.double()[None, :, :]) ** 2).sum(-1)
    true_d2, true_idx = d2.topk(3, dim=1, largest=False)
    assert torch.equal(idx, true_idx)
    expected = true_d2.sqrt() if metric == "l2" else true_d2
    torch.testing.assert_close(dist.double(), expected, rtol=1e-4, atol=0)  # the reference rounds in float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_hog_refuses_nan_and_inf_like_the_reference(backend):
    for value in (float("nan"), float("inf")):
        images = torch.rand(1, 1, 32, 32)
        images[0, 0, 5, 7] = value
        with pytest.raises(ValueError, match="images.*NaN or Inf"):
            ops.hog(images, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["hard_align", "soft_align"])
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_alignment_refuses_inf_and_nan_naming_the_argument(backend, op, where):
    for value in (float("inf"), float("nan")):
        tensors = {"q": torch.randn(1, 4, 3, 3), "k": torch.randn(1, 4, 2, 2), "v": torch.randn(1, 5, 2, 2)}
        tensors[where][0, 0, 0, 0] = value
        with pytest.raises(ValueError, match=f"{where}: contains NaN or Inf"):
            getattr(ops, op)(tensors["q"], tensors["k"], tensors["v"], backend=backend)


def test_raw_ops_refuse_non_finite_inputs_and_sigma():
    setup = """
        import torch, ad_fast.ops
        x = torch.rand(1, 1, 32, 32); x[0, 0, 3, 3] = float("nan")
        q, k = torch.randn(1, 2, 3), torch.randn(1, 2, 4); q[0, 0, 0] = float("inf")
        a, b = [torch.rand(1, 2, 3, 3)], [torch.rand(1, 2, 3, 3)]
        nan_a = [a[0].clone()]; nan_a[0][0, 0, 1, 1] = float("nan")
    """
    calls = {
        "hog nan": 'torch.ops.ad_fast.hog(x, 9, [8, 8], [2, 2], "L2-Hys", False, False)',
        "hard_align inf": "torch.ops.ad_fast.hard_align_match(q, k)",
        "soft_align inf": "torch.ops.ad_fast.soft_align(q, k, torch.randn(1, 3, 4), 1.0)",
        "anomaly_map nan": 'torch.ops.ad_fast.anomaly_map(nan_a, b, [4, 4], "l2", [1.0], 0.0)',
        "sigma 1e9": 'torch.ops.ad_fast.anomaly_map(a, b, [4, 4], "l2", [1.0], 1e9)',
        "sigma nan": 'torch.ops.ad_fast.anomaly_map(a, b, [4, 4], "l2", [1.0], float("nan"))',
    }
    outcomes = raised_each(setup, calls)
    for name in ("hog nan", "hard_align inf", "soft_align inf"):
        assert "NaN or Inf" in outcomes[name], (name, outcomes[name])
    assert "not finite" in outcomes["anomaly_map nan"], outcomes["anomaly_map nan"]
    assert "blur_sigma" in outcomes["sigma 1e9"] and "blur_sigma" in outcomes["sigma nan"], outcomes


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_anomaly_map_refuses_nan_features_on_every_backend(backend, metric):
    a, b = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    a[0, 1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        ops.anomaly_map(a, b, 8, metric=metric, backend=backend)


# --- errors that said too little ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_float64_inputs_requiring_grad(backend):
    query = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    bank = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    dist, idx = ops.knn(query, bank, 2, backend=backend)
    d = torch.cdist(query.detach(), bank.detach())
    torch.testing.assert_close(dist, d.topk(2, largest=False).values)


def test_memory_bank_stores_rows_without_grad():
    rows = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    bank = MemoryBank(3, torch.float64).add(rows)
    assert not bank.rows.requires_grad
    dist, idx = bank.search(rows.detach(), k=1)
    assert idx.squeeze(1).tolist() == list(range(6))


def test_memory_bank_search_names_a_numpy_query():
    bank = MemoryBank(3).add(torch.randn(4, 3))
    with pytest.raises(TypeError, match="query: expected a torch.Tensor, got ndarray"):
        bank.search(np.zeros((2, 3), dtype=np.float32))


@pytest.mark.parametrize("out_size", [None, "16", 3.5])
def test_anomaly_map_names_a_bad_out_size(out_size):
    with pytest.raises(ValueError, match="out_size"):
        ops.anomaly_map(torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3), out_size)


# --- stored norms are verified ------------------------------------------------------------------------------------
def _tamper_first_norm(path):
    """Overwrite sq_norms[0] in a saved bank with a huge value (same file size, valid safetensors)."""
    import json

    data = bytearray(path.read_bytes())
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_size])
    start = 8 + header_size + header["sq_norms"]["data_offsets"][0]
    data[start:start + 4] = np.float32(1e9).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("mmap", [False, True])
def test_memory_bank_load_does_not_trust_tampered_norms(tmp_path, mmap):
    rows = torch.randn(50, 8)
    query = rows[:1] + 0.01  # its nearest row is row 0, the one whose stored norm is tampered
    path = tmp_path / "bank.safetensors"
    MemoryBank(8).add(rows).save(path)
    _tamper_first_norm(path)
    if mmap:
        with pytest.raises(ValueError, match="bank.safetensors.*corrupt.*norms"):
            MemoryBank.load(path, mmap=True)
        return
    bank = MemoryBank.load(path)
    for metric in ("l2", "cosine"):
        for backend in BACKENDS:
            with ops.use_backend(backend):
                assert bank.search(query, k=1, metric=metric)[1].item() == 0


@pytest.mark.parametrize("out_size", [[], [3], [0, 4]])
def test_raw_anomaly_map_on_meta_checks_out_size(out_size):
    """The fake (meta) kernel indexed out_size[0] and [1] unchecked: an IndexError instead of a named error."""
    ops.anomaly_map  # noqa: B018 - loads the op library
    empty = [torch.empty(0, 0, 0, 0, device="meta")]
    with pytest.raises(RuntimeError, match="out_size"):
        torch.ops.ad_fast.anomaly_map(empty, empty, out_size, "cosine", [0.0], 0.0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_knn_under_a_large_common_offset_stays_within_its_documented_bound():
    """The CUDA kernel ranks untranslated keys ||b||^2 - 2 q.b (ops.knn's docstring): a returned neighbour may only
    be worse than the true k-th by the keys' float32 rounding, (D + 2) 2^-24 (||b||^2 + 2 ||q|| ||b||)."""
    generator = torch.Generator().manual_seed(0)
    offset = 1e4 * torch.randn(32, generator=generator)
    bank = offset + torch.randn(2000, 32, generator=generator)
    query = offset + torch.randn(200, 32, generator=generator)
    _, idx = ops.knn(query.cuda(), bank.cuda(), 3, "sqeuclidean", backend="kernel")
    idx = idx.cpu()
    d2 = ((query.double()[:, None, :] - bank.double()[None, :, :]) ** 2).sum(-1)
    kth = d2.topk(3, dim=1, largest=False).values[:, -1:]
    q_norm, b_norm = query.double().norm(dim=1, keepdim=True), bank.double().norm(dim=1)
    bound = (32 + 2) * 2.0**-24 * (b_norm[idx] ** 2 + 2 * q_norm * b_norm[idx])
    assert bool((d2.gather(1, idx) <= kth + bound).all())
    assert all(len(set(row)) == len(row) for row in idx.tolist())  # no bank row twice for a query


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("scale", [1e19, 1e30, 3e38])
def test_cuda_anomaly_map_cosine_of_huge_features_is_the_true_cosine(scale):
    a = torch.zeros(1, 2, 1, 1, device="cuda")
    b = torch.zeros(1, 2, 1, 1, device="cuda")
    a[0, :, 0, 0] = torch.tensor([scale, 0.0])
    b[0, :, 0, 0] = torch.tensor([scale / 2, scale / 2])  # 45 degrees: 1 - cos = 1 - 1/sqrt(2)
    out = ops.anomaly_map(a, b, 1, metric="cosine", backend="kernel")
    assert out.item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-6)
