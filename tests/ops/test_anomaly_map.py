"""anomaly_map: kernel vs reference vs an independent NumPy/SciPy oracle, odd sizes, layouts, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

import ad_fast
from ad_fast.ops import anomaly_map, reference

# Bounds: float32 kernel vs float32 reference, relative L2 error < 1e-5 (the bound); vs the float64
# oracle < 1e-5 too; float64 paths < 1e-10; half/bfloat16 on CUDA vs the float32 reference < 2e-2 / 5e-2.
F32_RTOL = 1e-5


def rel_err(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().cpu(), y.double().cpu()
    return float((x - y).norm() / y.norm().clamp_min(1e-30))


def oracle(feats_a, feats_b, out_size, metric, weights, sigma):
    """Independent float64 NumPy/SciPy version: loops over levels, scipy.ndimage.zoom-free bilinear, gaussian_filter."""
    total = np.zeros((feats_a[0].shape[0], out_size[0], out_size[1]))
    for a, b, w in zip(feats_a, feats_b, weights):
        a, b = a.double().numpy(), b.double().numpy()
        if metric == "cosine":
            num = (a * b).sum(1)
            den = np.sqrt(np.maximum((a * a).sum(1) * (b * b).sum(1), 1e-16))
            dist = 1.0 - num / den
        else:
            dist = np.sqrt(((a - b) ** 2).sum(1))
        total += w * _bilinear(dist, out_size)
    if sigma:
        total = np.stack([scipy.ndimage.gaussian_filter(m, sigma, mode="mirror", truncate=4.0) for m in total])
    return torch.from_numpy(total).unsqueeze(1)


def _axis_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] interpolation matrix of PyTorch's align_corners=False bilinear rule."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        m[i, i0] += 1 - frac
        m[i, i1] += frac
    return m


def _bilinear(maps: np.ndarray, out_size) -> np.ndarray:
    wy = _axis_weights(maps.shape[1], out_size[0])
    wx = _axis_weights(maps.shape[2], out_size[1])
    return np.einsum("yh,bhw,xw->byx", wy, maps, wx)


def random_levels(batch, shapes, device="cpu", dtype=torch.float32):
    a = [torch.randn(batch, c, h, w, device=device, dtype=dtype) for c, h, w in shapes]
    b = [torch.randn(batch, c, h, w, device=device, dtype=dtype) for c, h, w in shapes]
    return a, b


SHAPES = [[(13, 7, 5)], [(13, 7, 5), (9, 4, 3), (30, 1, 1)], [(17, 33, 17)]]


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("sigma", [None, 1.5, 9.0])
@pytest.mark.parametrize("batch", [1, 3])
def test_kernel_matches_reference_and_oracle(shapes, metric, sigma, batch):
    a, b = random_levels(batch, shapes)
    weights = [0.5 + i for i in range(len(shapes))]
    out = anomaly_map(a, b, (33, 17), metric=metric, weights=weights, blur_sigma=sigma, backend="kernel")
    ref = reference.anomaly_map(a, b, (33, 17), metric=metric, weights=weights, blur_sigma=sigma)
    assert out.shape == (batch, 1, 33, 17) and out.dtype == torch.float32
    assert rel_err(out, ref) < F32_RTOL
    assert rel_err(out, oracle(a, b, (33, 17), metric, weights, sigma)) < F32_RTOL
    assert rel_err(ref, oracle(a, b, (33, 17), metric, weights, sigma)) < F32_RTOL


def test_float64_is_exact_to_rounding():
    a, b = random_levels(2, [(5, 6, 7), (3, 2, 9)], dtype=torch.float64)
    out = anomaly_map(a, b, (11, 13), blur_sigma=2.0, backend="kernel")
    assert out.dtype == torch.float64
    assert rel_err(out, oracle(a, b, (11, 13), "cosine", [1.0, 1.0], 2.0)) < 1e-10


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_non_contiguous_inputs(layout):
    a, b = random_levels(3, [(19, 9, 11), (7, 5, 4)])
    if layout == "channels_last":
        a2 = [t.contiguous(memory_format=torch.channels_last) for t in a]
        b2 = [t.contiguous(memory_format=torch.channels_last) for t in b]
    elif layout == "transposed":
        a2 = [t.transpose(2, 3).contiguous().transpose(2, 3) for t in a]
        b2 = [t.transpose(2, 3).contiguous().transpose(2, 3) for t in b]
    else:
        a2 = [torch.cat([t, t], 1)[:, ::2] for t in a]
        b2 = [torch.cat([t, t], 1)[:, ::2] for t in b]
    assert not a2[0].is_contiguous()
    out = anomaly_map(a2, b2, (21, 10), blur_sigma=1.0, backend="kernel")
    assert rel_err(out, reference.anomaly_map(a, b, (21, 10), blur_sigma=1.0)) < F32_RTOL


def test_reduce_mean_and_score():
    a, b = random_levels(2, [(8, 5, 5), (8, 3, 3)])
    out, score = anomaly_map(a, b, 16, weights=[1.0, 3.0], reduce="mean", return_score=True, backend="kernel")
    summed = reference.anomaly_map(a, b, 16, weights=[1.0, 3.0])
    assert rel_err(out, summed / 4.0) < F32_RTOL
    torch.testing.assert_close(score, out.flatten(1).amax(1))


def test_identical_features_give_zero_map():
    a, _ = random_levels(2, [(8, 5, 5)])
    out = anomaly_map(a, [t.clone() for t in a], 9, backend="kernel")
    assert out.abs().max() < 1e-6


def test_blur_border_is_reflect():
    """A single hot pixel at the corner: reflect mirrors it about the edge sample, so the blurred map equals
    scipy's 'mirror' mode and differs from zero or replicate padding."""
    a = [torch.ones(1, 1, 6, 6)]
    b = [torch.ones(1, 1, 6, 6)]
    b[0][0, 0, 0, 0] = -1.0  # cosine distance 2 at the corner, 0 elsewhere
    out = anomaly_map(a, b, (6, 6), blur_sigma=1.0, backend="kernel")[0, 0].double().numpy()
    impulse = np.zeros((6, 6))
    impulse[0, 0] = 2.0
    np.testing.assert_allclose(out, scipy.ndimage.gaussian_filter(impulse, 1.0, mode="mirror", truncate=4.0), atol=1e-6)
    assert not np.allclose(out, scipy.ndimage.gaussian_filter(impulse, 1.0, mode="nearest", truncate=4.0), atol=1e-4)
    assert abs(out.sum() - 2.0) > 1e-3  # mirror without edge repeat does not preserve mass at a corner


def test_size_one_output_and_input():
    a, b = random_levels(1, [(4, 1, 1)])
    out = anomaly_map(a, b, (1, 1), blur_sigma=3.0, backend="kernel")
    assert rel_err(out, oracle(a, b, (1, 1), "cosine", [1.0], 3.0)) < F32_RTOL


def test_empty_batch():
    a, b = random_levels(0, [(4, 3, 3)])
    assert anomaly_map(a, b, (5, 5), backend="kernel").shape == (0, 1, 5, 5)


def test_half_inputs_on_cpu_compute_in_float32():
    a, b = random_levels(2, [(16, 6, 6)])
    out = anomaly_map([t.half() for t in a], [t.half() for t in b], 12, backend="kernel")
    assert out.dtype == torch.float32
    assert rel_err(out, reference.anomaly_map(a, b, 12)) < 5e-3


def test_grad_falls_back_to_differentiable_reference():
    a, b = random_levels(1, [(3, 4, 4)], dtype=torch.float64)
    a[0].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: anomaly_map([x], b, (5, 6), blur_sigma=1.0), (a[0],))


def test_reference_backend_switch_matches_kernel():
    a, b = random_levels(2, [(6, 5, 5)])
    with ad_fast.ops.use_backend("reference"):
        ref = anomaly_map(a, b, 10)
    assert ad_fast.ops.get_backend() == "auto"
    assert rel_err(anomaly_map(a, b, 10), ref) < F32_RTOL


def test_opcheck():
    a, b = random_levels(2, [(6, 5, 7), (3, 2, 2)])
    torch.library.opcheck(torch.ops.ad_fast.anomaly_map.default, (a, b, [9, 8], "cosine", [1.0, 0.5], 1.0))
    torch.library.opcheck(torch.ops.ad_fast.anomaly_map.default, (a, b, [9, 8], "l2", [1.0, 0.5], 0.0))


def test_torch_compile():
    a, b = random_levels(2, [(6, 5, 7)])
    compiled = torch.compile(lambda x, y: torch.ops.ad_fast.anomaly_map([x], [y], [9, 8], "cosine", [1.0], 1.0), fullgraph=True)
    assert rel_err(compiled(a[0], b[0]), reference.anomaly_map(a, b, (9, 8), blur_sigma=1.0)) < F32_RTOL


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(feats_a=[], feats_b=[]), ValueError, "feats_a"),
        (dict(feats_b=[torch.randn(2, 4, 5, 5)] * 2), ValueError, "feats_b"),
        (dict(feats_b=[torch.randn(2, 4, 5, 6)]), ValueError, "feats_b\\[0\\]"),
        (dict(feats_a=[torch.randn(2, 4, 5)], feats_b=[torch.randn(2, 4, 5)]), ValueError, "4-d"),
        (dict(feats_a=[torch.ones(2, 4, 5, 5, dtype=torch.int64)], feats_b=[torch.ones(2, 4, 5, 5, dtype=torch.int64)]), TypeError, "dtype"),
        (dict(feats_a=[torch.randn(2, 0, 5, 5)], feats_b=[torch.randn(2, 0, 5, 5)]), ValueError, "non-empty"),
        (dict(out_size=(0, 5)), ValueError, "out_size"),
        (dict(metric="manhattan"), ValueError, "metric"),
        (dict(reduce="max"), ValueError, "reduce"),
        (dict(weights=[1.0, 2.0]), ValueError, "weights"),
        (dict(blur_sigma=-1.0), ValueError, "blur_sigma"),
        (dict(backend="fast"), ValueError, "backend"),
    ],
)
def test_bad_input_raises_clear_error(kwargs, error, match):
    args = dict(feats_a=[torch.randn(2, 4, 5, 5)], feats_b=[torch.randn(2, 4, 5, 5)], out_size=(8, 8))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        anomaly_map(**args)


def test_compiled_op_checks_its_arguments_too():
    with pytest.raises(RuntimeError, match="same shape"):
        torch.ops.ad_fast.anomaly_map([torch.randn(1, 2, 3, 3)], [torch.randn(1, 2, 3, 4)], [4, 4], "cosine", [1.0], 0.0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, bound", [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("sigma", [None, 4.0])
def test_cuda_matches_reference(dtype, bound, sigma):
    a, b = random_levels(3, [(56, 33, 17), (160, 9, 5), (448, 3, 2)])
    ref = reference.anomaly_map(a, b, (65, 31), blur_sigma=sigma)
    out = anomaly_map([t.cuda().to(dtype) for t in a], [t.cuda().to(dtype) for t in b], (65, 31), blur_sigma=sigma,
                      backend="kernel")
    assert out.is_cuda and out.dtype == torch.float32
    assert rel_err(out, ref) < bound


@pytest.mark.cuda
def test_cuda_channels_last_and_poisoned_output():
    a, b = random_levels(2, [(24, 17, 9)], device="cuda")
    a = [t.contiguous(memory_format=torch.channels_last) for t in a]
    torch.empty(2 * 64 * 64, device="cuda").fill_(float("nan"))  # leave NaN in the caching allocator's blocks
    out = anomaly_map(a, b, (64, 64), blur_sigma=2.0, backend="kernel")
    assert torch.isfinite(out).all()
    assert rel_err(out, reference.anomaly_map([t.cpu() for t in a], [t.cpu() for t in b], (64, 64), blur_sigma=2.0)) < 1e-5


def test_kernel_availability_is_per_op_and_device():
    from ad_fast.ops._backend import kernel_available

    assert kernel_available("anomaly_map", torch.device("cpu"))
    assert not kernel_available("no_such_op", torch.device("cpu"))
    assert not kernel_available("anomaly_map", torch.device("meta"))
    with pytest.raises(RuntimeError, match="no_such_op"):
        ad_fast.ops._backend.use_kernel("no_such_op", torch.device("cpu"), "kernel")
