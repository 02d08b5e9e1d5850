"""soft_align / hard_align: kernel vs a float64 einsum oracle and the reference, gradients, multi-prompt, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ad_fast
from ad_fast.ops import hard_align, reference, soft_align

# Bounds (relative L2 error): float64 kernel vs the float64 oracle < 1e-12; float32 kernel < 1e-5 (its exp is a
# ~1-ulp polynomial and the tiles sum in another order); half/bfloat16 on CUDA vs float32 < 1e-2 / 3e-2.
F64_RTOL = 1e-12
F32_RTOL = 1e-5


def rel_err(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.detach().double().cpu(), y.detach().double().cpu()
    return float((x - y).norm() / y.norm().clamp_min(1e-30))


def oracle(q, k, v, scale=1.0):
    """Independent float64 einsum version; k, v may carry a prompt dim [B, P, C, H, W]."""
    q, k, v = q.double(), k.double(), v.double()
    if k.dim() == 5:
        k = k.transpose(1, 2).flatten(2)
        v = v.transpose(1, 2).flatten(2)
    logits = scale * torch.einsum("bci,bcp->bip", q.flatten(2), k.flatten(2))
    out = torch.einsum("bip,bcp->bci", logits.softmax(-1), v.flatten(2))
    return out.reshape(q.shape[0], v.shape[1], *q.shape[2:])


def make(batch, cqk, cv, q_hw, p_hw, dtype=torch.float64, prompts=None, device="cpu"):
    extra = () if prompts is None else (prompts,)
    q = torch.randn(batch, cqk, *q_hw, dtype=dtype, device=device)
    k = torch.randn(batch, *extra, cqk, *p_hw, dtype=dtype, device=device)
    v = torch.randn(batch, *extra, cv, *p_hw, dtype=dtype, device=device)
    return q, k, v


CASES = [  # (batch, Cqk, Cv, query grid, prompt grid)
    (1, 1, 56, (1, 1), (1, 1)),
    (3, 28, 56, (7, 9), (7, 9)),
    (1, 80, 160, (7, 9), (1, 1)),
    (3, 1, 160, (9, 7), (33, 17)),
    (1, 224, 448, (8, 8), (8, 8)),
    (3, 28, 448, (1, 1), (7, 9)),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_float64_matches_oracle(case):
    q, k, v = make(*case)
    out = soft_align(q, k, v, backend="kernel")
    assert out.shape == (case[0], case[2], *case[3]) and out.dtype == torch.float64
    assert rel_err(out, oracle(q, k, v)) < F64_RTOL
    assert rel_err(reference.soft_align(q, k, v), oracle(q, k, v)) < F64_RTOL


@pytest.mark.parametrize("cqk, cv", [(28, 56), (80, 160)])
def test_forward_float32_crosses_several_tiles(cqk, cv):
    """Grids larger than one 128 x 512 tile in both directions (64x64 query vs 32x32 prompt)."""
    q, k, v = make(1, cqk, cv, (64, 64), (32, 32), dtype=torch.float32)
    q, k = q / cqk**0.25, k / cqk**0.25
    out = soft_align(q, k, v, backend="kernel")
    assert out.dtype == torch.float32
    assert rel_err(out, oracle(q, k, v)) < F32_RTOL


@pytest.mark.slow
@pytest.mark.parametrize("cqk, cv", [(28, 56), (80, 160), (224, 448)])
def test_forward_float64_large(cqk, cv):
    q, k, v = make(3, cqk, cv, (64, 64), (32, 32))
    assert rel_err(soft_align(q, k, v, backend="kernel"), oracle(q, k, v)) < F64_RTOL


def test_matches_scaled_dot_product_attention():
    """SDPA on (B, 1, N, d) views is the same op when scale is passed explicitly (V may be wider than d)."""
    q, k, v = make(2, 28, 56, (9, 7), (5, 6), dtype=torch.float32)
    sdpa = F.scaled_dot_product_attention(
        q.flatten(2).mT[:, None], k.flatten(2).mT[:, None], v.flatten(2).mT[:, None], scale=0.3
    )[:, 0].mT.reshape(2, 56, 9, 7)
    assert rel_err(soft_align(q, k, v, scale=0.3, backend="kernel"), sdpa) < F32_RTOL


@pytest.mark.parametrize("dtype, bound", [(torch.float64, F64_RTOL), (torch.float32, F32_RTOL)])
def test_large_logits_are_stable(dtype, bound):
    """Logits of size ~1e4 (a peaked softmax): exp would overflow without the running max."""
    q, k, v = make(2, 28, 56, (9, 9), (30, 30), dtype=dtype)
    out = soft_align(q * 30, k * 30, v, backend="kernel")
    assert torch.isfinite(out).all()
    assert rel_err(out, oracle(q * 30, k * 30, v)) < bound


def test_negative_and_zero_scale():
    q, k, v = make(2, 5, 7, (3, 4), (6, 5))
    assert rel_err(soft_align(q, k, v, scale=-2.5, backend="kernel"), oracle(q, k, v, -2.5)) < F64_RTOL
    uniform = v.flatten(2).mean(2)[:, :, None, None].expand(-1, -1, 3, 4)
    assert rel_err(soft_align(q, k, v, scale=0.0, backend="kernel"), uniform) < F64_RTOL


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed"])
def test_non_contiguous_inputs(layout):
    q, k, v = make(3, 12, 20, (7, 9), (6, 5), dtype=torch.float32)
    if layout == "channels_last":
        q2, k2, v2 = (t.contiguous(memory_format=torch.channels_last) for t in (q, k, v))
    elif layout == "sliced":
        q2, k2, v2 = (torch.stack([t, t], 2).flatten(1, 2)[:, ::2] for t in (q, k, v))
    else:
        q2, k2, v2 = (t.transpose(2, 3).contiguous().transpose(2, 3) for t in (q, k, v))
    assert not q2.is_contiguous()
    assert rel_err(soft_align(q2, k2, v2, backend="kernel"), oracle(q, k, v)) < F32_RTOL


def test_several_prompts_softmax_over_all_positions():
    q, k, v = make(2, 9, 11, (5, 4), (3, 6), prompts=3)
    out = soft_align(q, k, v, backend="kernel")
    assert rel_err(out, oracle(q, k, v)) < F64_RTOL
    # Equal to one wide prompt holding the three side by side.
    wide_k, wide_v = torch.cat(k.unbind(1), dim=3), torch.cat(v.unbind(1), dim=3)
    assert rel_err(out, soft_align(q, wide_k, wide_v, backend="kernel")) < F64_RTOL


def test_different_query_and_prompt_grids_and_empty_batch():
    q, k, v = make(0, 4, 6, (3, 3), (2, 2))
    assert soft_align(q, k, v, backend="kernel").shape == (0, 6, 3, 3)
    q, k, v = make(2, 4, 6, (1, 5), (3, 1))
    assert rel_err(soft_align(q, k, v, backend="kernel"), oracle(q, k, v)) < F64_RTOL


def test_half_on_cpu_computes_in_float32():
    q, k, v = make(2, 16, 24, (6, 6), (5, 5), dtype=torch.float32)
    out = soft_align(q.half(), k.half(), v.half(), backend="kernel")
    assert out.dtype == torch.float16
    assert rel_err(out, oracle(q.half(), k.half(), v.half())) < 2e-3


@pytest.mark.parametrize("case", [(2, 3, 5, (3, 4), (2, 3)), (1, 4, 2, (1, 1), (5, 7))], ids=str)
@pytest.mark.parametrize("prompts", [None, 2])
def test_gradcheck_float64(case, prompts):
    q, k, v = (t.requires_grad_() for t in make(*case, prompts=prompts))
    assert torch.autograd.gradcheck(lambda a, b, c: soft_align(a, b, c, scale=0.7, backend="kernel"), (q, k, v))


def test_gradients_match_oracle_across_tiles():
    """Backward over several query and prompt tiles (and dQ slices), float64 vs autograd of the oracle."""
    q, k, v = (t.requires_grad_() for t in make(2, 8, 12, (20, 30), (25, 25)))
    grad = torch.randn(2, 12, 20, 30, dtype=torch.float64)
    got = torch.autograd.grad(soft_align(q, k, v, scale=0.5, backend="kernel"), (q, k, v), grad)
    want = torch.autograd.grad(oracle(q, k, v, 0.5), (q, k, v), grad)
    for g, w in zip(got, want):
        assert rel_err(g, w) < F64_RTOL


def test_worker_threads_with_inputs_that_require_grad():
    """With several threads, worker threads run the tile products; inputs requiring grad must not trip them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        q, k, v = (t.requires_grad_() for t in make(3, 8, 12, (20, 30), (25, 25), dtype=torch.float32))
        out = soft_align(q, k, v, backend="kernel")
        got = torch.autograd.grad(out.sum(), (q, k, v))
        sim = hard_align(q, k, v, return_similarity=True, backend="kernel")[1]
    finally:
        torch.set_num_threads(previous)
    assert rel_err(out, oracle(q, k, v)) < F32_RTOL
    for g, w in zip(got, torch.autograd.grad(oracle(q, k, v).sum(), (q, k, v))):
        assert rel_err(g, w) < F32_RTOL
    assert rel_err(sim, hard_oracle(q, k, v)[1]) < 1e-6


def test_only_needed_gradients_are_returned():
    q, k, v = make(1, 4, 6, (3, 3), (4, 4))
    q.requires_grad_()
    (grad_q,) = torch.autograd.grad(soft_align(q, k, v, backend="kernel").sum(), (q,))
    want = torch.autograd.grad(oracle(q, k, v).sum(), (q,))[0]
    assert rel_err(grad_q, want) < F64_RTOL


def test_reference_backend_switch_matches_kernel():
    q, k, v = make(2, 6, 10, (5, 5), (4, 4), dtype=torch.float32)
    with ad_fast.ops.use_backend("reference"):
        ref = soft_align(q, k, v)
    assert rel_err(soft_align(q, k, v), ref) < F32_RTOL


def _op_args(dtype=torch.float64):
    q, k, v = (t.flatten(2) for t in make(2, 5, 7, (3, 4), (6, 5), dtype=dtype))
    return q, k, v


def test_opcheck():
    q, k, v = _op_args()
    torch.library.opcheck(torch.ops.ad_fast.soft_align.default, (q.requires_grad_(), k.requires_grad_(), v, 0.8))
    out, lse = torch.ops.ad_fast.soft_align(q.detach(), k.detach(), v, 0.8)
    delta = (out * out).sum(1)
    backward_args = (out, q.detach(), k.detach(), v, lse, delta, 0.8, True)
    torch.library.opcheck(torch.ops.ad_fast._soft_align_backward.default, backward_args)
    torch.library.opcheck(torch.ops.ad_fast.hard_align_match.default, (q.detach(), k.detach()))


def test_lse_output_and_its_gradient():
    q, k, v = (t.requires_grad_() for t in _op_args())
    out, lse = torch.ops.ad_fast.soft_align(q, k, v, 0.8)
    logits = 0.8 * torch.einsum("bci,bcp->bip", q, k)
    assert rel_err(lse, torch.logsumexp(logits, -1)) < F64_RTOL
    got = torch.autograd.grad((out.sum() + (lse * lse).sum()), (q, k))
    want = torch.autograd.grad((oracle(q, k, v, 0.8).sum() + (torch.logsumexp(logits, -1) ** 2).sum()), (q, k))
    for g, w in zip(got, want):
        assert rel_err(g, w) < F64_RTOL


def test_torch_compile():
    q, k, v = make(2, 6, 10, (5, 5), (4, 4), dtype=torch.float32)
    q.requires_grad_()
    compiled = torch.compile(lambda a, b, c: soft_align(a, b, c, backend="kernel"), fullgraph=True)
    out = compiled(q, k, v)
    assert rel_err(out, oracle(q, k, v)) < F32_RTOL
    (grad,) = torch.autograd.grad(out.sum(), (q,))
    assert rel_err(grad, torch.autograd.grad(oracle(q, k, v).sum(), (q,))[0]) < 1e-4


# ---- hard_align ----


def hard_oracle(q, k, v):
    """Float64 loop-free oracle: cosine matrix, first index of the maximum."""
    qn = F.normalize(q.double().flatten(2), dim=1, eps=1e-8)
    kn = F.normalize(k.double().flatten(2), dim=1, eps=1e-8)
    cos = torch.einsum("bci,bcp->bip", qn, kn)
    best, idx = cos.max(-1)
    out = torch.stack([v[b].flatten(1)[:, idx[b]] for b in range(v.shape[0])])
    return out.reshape(v.shape[0], v.shape[1], *q.shape[2:]), best.reshape(q.shape[0], 1, *q.shape[2:])


HARD_CASES = [(3, 28, 56, (7, 9), (7, 9)), (1, 1, 5, (1, 1), (1, 1)), (2, 5, 3, (30, 30), (25, 30))]


@pytest.mark.parametrize("case", HARD_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hard_align_matches_oracle(case, dtype):
    q, k, v = make(*case, dtype=dtype)
    out, sim = hard_align(q, k, v, return_similarity=True, backend="kernel")
    want, want_sim = hard_oracle(q, k, v)
    assert out.dtype == dtype and sim.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(out, want.to(dtype))
    assert rel_err(sim, want_sim) < (1e-12 if dtype == torch.float64 else 1e-6)
    ref_out, ref_sim = reference.hard_align(q, k, v, return_similarity=True)
    assert torch.equal(ref_out, out) and rel_err(ref_sim, sim) < 1e-6


def test_hard_align_ties_take_the_lowest_index():
    q = torch.randn(1, 4, 3, 3)
    k = torch.randn(1, 4, 1, 600)
    k[0, :, 0, 550] = 2.0 * q[0, :, 1, 1]  # same direction as query (1, 1): cosine 1 ...
    k[0, :, 0, 7] = q[0, :, 1, 1]  # ... at an earlier position too, in another prompt tile
    v = torch.arange(600.0).reshape(1, 1, 1, 600)
    out, sim = hard_align(q, k, v, return_similarity=True, backend="kernel")
    assert out[0, 0, 1, 1] == 7.0
    assert abs(float(sim[0, 0, 1, 1]) - 1.0) < 1e-6
    dup = torch.cat([k, k], dim=3)  # every position duplicated: the first copy wins
    out2 = hard_align(q, dup, torch.arange(1200.0).reshape(1, 1, 1, 1200), backend="kernel")
    assert torch.equal(out2, out)


def test_hard_align_zero_vectors_and_several_prompts():
    q, k, v = make(2, 6, 4, (4, 4), (3, 3), prompts=2)
    q[0, :, 0, 0] = 0.0
    out, sim = hard_align(q, k, v, return_similarity=True, backend="kernel")
    want, want_sim = hard_oracle(q, k.transpose(1, 2).flatten(2), v.transpose(1, 2).flatten(2))
    assert torch.equal(out, want) and rel_err(sim, want_sim) < 1e-12
    assert sim[0, 0, 0, 0] == 0.0


def test_hard_align_is_differentiable_in_v():
    q, k, v = make(1, 3, 4, (2, 2), (3, 3))
    v.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: hard_align(q, k, x, backend="kernel"), (v,))


# ---- bad input ----


@pytest.mark.parametrize("fn", [soft_align, hard_align])
@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(k=torch.randn(3, 4, 5, 5)), ValueError, "batch size"),
        (dict(k=torch.randn(2, 5, 5, 5)), ValueError, "Cqk=4"),
        (dict(k=torch.randn(2, 4, 0, 5), v=torch.randn(2, 6, 0, 5)), ValueError, "at least one prompt position"),
        (dict(k=torch.randn(2, 0, 4, 5, 5), v=torch.randn(2, 0, 6, 5, 5)), ValueError, "at least one prompt position"),
        (dict(v=torch.randn(2, 6, 5, 4)), ValueError, "prompt grid"),
        (dict(v=torch.randn(2, 3, 6, 5, 5)), ValueError, "v: expected a 4-d"),
        (dict(k=torch.randn(2, 2, 4, 5, 5), v=torch.randn(2, 3, 6, 5, 5)), ValueError, "prompts"),
        (dict(q=torch.randn(2, 4, 5)), ValueError, "q: expected a 4-d"),
        (dict(q=torch.ones(2, 4, 5, 5, dtype=torch.int64)), TypeError, "q: expected dtype"),
        (dict(k=torch.randn(2, 4, 5, 5, dtype=torch.float64)), TypeError, "like q"),
        (dict(q=[1.0]), TypeError, "q: expected a torch.Tensor"),
        (dict(backend="fast"), ValueError, "backend"),
    ],
)
def test_bad_input_raises_clear_error(fn, change, error, match):
    args = dict(q=torch.randn(2, 4, 3, 3), k=torch.randn(2, 4, 5, 5), v=torch.randn(2, 6, 5, 5))
    args.update(change)
    with pytest.raises(error, match=match):
        fn(**args)


@pytest.mark.parametrize("backend", ["kernel", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_logits_that_could_overflow_are_refused(backend, dtype):
    """|scale * q.k| past float32's range (the fuzz case q=1.541, k=3e38): kernel, reference and raw op refuse it
    alike instead of returning v (kernel) or NaN (reference); just inside the range both still agree."""
    q, k, v = torch.full((1, 1, 1, 1), 1.541), torch.full((1, 1, 1, 1), 3e38), torch.ones(1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"q, k, scale: .* float32 .*rescale"):
        soft_align(q, k, v, 1.0, backend=backend)
    with pytest.raises(ValueError, match=r"q, k, scale: .* float32"):
        torch.ops.ad_fast.soft_align(q.flatten(2), k.flatten(2), v.flatten(2), 1.0)
    with pytest.raises(ValueError, match="scale must be finite"):
        soft_align(q, q, v, float("inf"), backend=backend)
    big = torch.randn(1, 3, 2, 2, dtype=torch.float64).to(dtype)
    k_small = torch.randn(1, 3, 4, 1, dtype=torch.float64).to(dtype)
    norm_q, norm_k = float(big.double().flatten(2).norm(dim=1).max()), float(k_small.double().flatten(2).norm(dim=1).max())
    scale = 0.5 * torch.finfo(torch.float32).max / (norm_q * norm_k)  # the bound at half the range: accepted
    out = soft_align(big, k_small, torch.randn(1, 2, 4, 1).to(dtype), scale, backend=backend)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="q, k, scale"):
        soft_align(big, k_small, torch.randn(1, 2, 4, 1).to(dtype), 4 * scale, backend=backend)


def test_float64_logits_use_the_float64_range():
    q, k, v = torch.full((1, 1, 1, 1), 1e30, dtype=torch.float64), torch.full((1, 1, 2, 1), 1e30, dtype=torch.float64), torch.randn(1, 2, 2, 1, dtype=torch.float64)
    k[0, 0, 1, 0] = 0.9e30
    expected = v[..., :1, :].expand(1, 2, 1, 1)  # logits 1e60 and 0.9e60: all weight on the first position
    for backend in ("kernel", "reference"):
        assert rel_err(soft_align(q, k, v, backend=backend), expected) < F64_RTOL


def test_compiled_op_checks_its_arguments_too():
    with pytest.raises(RuntimeError, match="Cqk=4"):
        torch.ops.ad_fast.soft_align(torch.randn(1, 4, 3), torch.randn(1, 5, 3), torch.randn(1, 2, 3), 1.0)
    with pytest.raises(RuntimeError, match="at least one prompt position"):
        torch.ops.ad_fast.hard_align_match(torch.randn(1, 4, 3), torch.randn(1, 4, 0))


# ---- CUDA ----


CUDA_CASES = [
    (2, 28, 56, (64, 64), (32, 32)),
    (3, 80, 160, (7, 9), (33, 17)),
    (1, 224, 448, (16, 16), (16, 16)),
    (2, 1, 5, (1, 1), (1, 1)),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, bound", [(torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("case", CUDA_CASES, ids=str)
def test_cuda_forward_backward_match_oracle(dtype, bound, case):
    q, k, v = make(*case, dtype=torch.float32)
    q, k = q / case[1] ** 0.25, k / case[1] ** 0.25
    qc, kc, vc = (t.cuda().to(dtype).requires_grad_() for t in (q, k, v))
    out = soft_align(qc, kc, vc, backend="kernel")
    assert out.is_cuda and out.dtype == dtype
    q64, k64, v64 = (t.detach().cpu().double().requires_grad_() for t in (qc, kc, vc))
    want = oracle(q64, k64, v64)
    assert rel_err(out, want) < bound
    grad = torch.randn_like(want)
    got = torch.autograd.grad(out, (qc, kc, vc), grad.cuda().to(dtype))
    wants = torch.autograd.grad(want, (q64, k64, v64), grad)
    for g, w in zip(got, wants):
        # Relative to the reference gradient, with an absolute floor of 1e-6: with one prompt position the
        # softmax is constant and dq is exactly zero, which rounding can only approach.
        err = float((g.detach().double().cpu() - w).norm())
        assert err < 4 * bound * float(w.norm()) + 1e-6


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_hard_align_and_multi_prompt(dtype):
    q, k, v = make(2, 28, 56, (16, 16), (16, 16), dtype=torch.float32, prompts=2)
    qc, kc, vc = (t.cuda().to(dtype) for t in (q, k, v))
    out, sim = hard_align(qc, kc, vc, return_similarity=True, backend="kernel")
    ref_out, ref_sim = reference.hard_align(qc.float(), kc.float(), vc.float(), return_similarity=True)
    assert rel_err(sim, ref_sim) < (1e-6 if dtype == torch.float32 else 1e-2)
    agree = (out.float() == ref_out.to(out.dtype).float()).all(1).float().mean()
    assert agree > (0.999 if dtype == torch.float32 else 0.9)
    bound = 1e-5 if dtype == torch.float32 else 3e-2
    assert rel_err(soft_align(qc, kc, vc, backend="kernel"), oracle(qc, kc, vc)) < bound
