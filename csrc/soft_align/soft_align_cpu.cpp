// CPU kernels of soft alignment, flash-style. Per (batch, tile of query positions) the prompt is walked in
// tiles: logits tile by BLAS (ATen addmm on tile views), an online softmax (running max and sum per query)
// and the value product accumulated by BLAS into an output tile. Memory beyond inputs and outputs is one
// logits tile and one output tile per thread; the Nq x Np attention matrix never exists.
// The backward recomputes the probabilities tile by tile from the forward's logsumexp (flash-attention-2):
// dP = dO V^T, D = rowsum(dO * O), dS = P * (dP - D); dV += P^T dO, dK += scale dS^T Q, dQ += scale dS K.
// It runs over (batch, group of prompt tiles) so dK and dV tiles have one writer; each group adds into its own
// dQ slice, summed at the end (deterministic).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/cpu_isa.h"
#include "soft_align/soft_align_checks.h"

namespace ad_fast {
namespace soft_align {
namespace {

constexpr int64_t kQueryTile = 128;   // query positions per work item
constexpr int64_t kPromptTile = 512;  // prompt positions per logits tile (128 x 512 fp32 = 256 KiB)

// exp(x) for float, vectorisable (Cephes-style range reduction + degree-6 polynomial, ~1 ulp for x in
// [-87, 88]); x below -87 gives exactly 0, as a softmax weight that far below the max must.
inline float fast_exp(float x) {
  const float x_in = x;
  x = std::min(std::max(x, -87.0f), 88.0f);
  // Round to nearest with the 1.5 * 2^23 trick: std::floor would block vectorisation (no -fno-trapping-math).
  const float fx = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  x = x - fx * 0.693359375f + fx * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * x * x + x + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fx) + 127) << 23;
  float pow2;
  std::memcpy(&pow2, &bits, sizeof(pow2));
  return x_in < -87.0f ? 0.0f : y * pow2;
}

inline double fast_exp(double x) { return std::exp(x); }

// The row helpers stay out of line (inlined into the tile loop, GCC no longer vectorises them), so each
// dispatches itself (common/cpu_isa.h).
// In place over one row of n logits: row = scale * row; returns the row max.
template <typename scalar_t>
__attribute__((noinline)) scalar_t scale_and_max(scalar_t* row, int64_t n, scalar_t scale) {
  return cpu::dispatch([&] {
    scalar_t mx = -std::numeric_limits<scalar_t>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < n; ++j) {
      row[j] *= scale;
      mx = std::max(mx, row[j]);
    }
    return mx;
  });
}

// In place over one row: row = exp(row - shift); returns the row sum.
template <typename scalar_t>
__attribute__((noinline)) scalar_t exp_and_sum(scalar_t* row, int64_t n, scalar_t shift) {
  return cpu::dispatch([&] {
    scalar_t sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) {
      row[j] = fast_exp(row[j] - shift);
      sum += row[j];
    }
    return sum;
  });
}

// A view of the first rows*cols elements of a flat buffer as a contiguous [rows, cols] matrix.
inline at::Tensor tile_view(const at::Tensor& buffer, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, rows * cols).view({rows, cols});
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale, at::Tensor& out,
                    at::Tensor& lse) {
  const int64_t B = q.size(0), Nq = q.size(2), Np = k.size(2), Cv = v.size(1);
  const int64_t n_qtiles = (Nq + kQueryTile - 1) / kQueryTile;
  const scalar_t s = static_cast<scalar_t>(scale);
  cpu::parallel_for(0, B * n_qtiles, 1, [&](int64_t begin, int64_t end) {
    // Worker threads do not inherit the caller's dispatch state: keep the tile ops below autograd (inputs may
    // require grad; out= ops refuse those).
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor logits_buf = at::empty({kQueryTile * std::min(kPromptTile, Np)}, q.options());
    at::Tensor acc_buf = at::empty({Cv * kQueryTile}, q.options());
    std::vector<scalar_t> run_max(kQueryTile), run_sum(kQueryTile), rescale(kQueryTile);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / n_qtiles, i0 = (item % n_qtiles) * kQueryTile;
      const int64_t tq = std::min(kQueryTile, Nq - i0);
      const at::Tensor q_tile_t = q[b].narrow(1, i0, tq).t();  // [tq, Cqk]
      at::Tensor acc = tile_view(acc_buf, Cv, tq);              // out tile, transposed: [Cv, tq]
      scalar_t* acc_ptr = acc.data_ptr<scalar_t>();
      std::fill(run_max.begin(), run_max.end(), -std::numeric_limits<scalar_t>::infinity());
      std::fill(run_sum.begin(), run_sum.end(), scalar_t(0));
      for (int64_t p0 = 0; p0 < Np; p0 += kPromptTile) {
        const int64_t tp = std::min(kPromptTile, Np - p0);
        at::Tensor logits = tile_view(logits_buf, tq, tp);
        at::mm_out(logits, q_tile_t, k[b].narrow(1, p0, tp));
        scalar_t* lp = logits.data_ptr<scalar_t>();
        bool any_rescale = false;
        for (int64_t r = 0; r < tq; ++r) {
          scalar_t* row = lp + r * tp;
          const scalar_t new_max = std::max(run_max[r], scale_and_max(row, tp, s));
          rescale[r] = fast_exp(run_max[r] - new_max);  // 0 on the first tile (max was -inf)
          any_rescale = any_rescale || rescale[r] != scalar_t(1);
          run_sum[r] = run_sum[r] * rescale[r] + exp_and_sum(row, tp, new_max);
          run_max[r] = new_max;
        }
        const bool first = p0 == 0;
        if (!first && any_rescale) {
          for (int64_t c = 0; c < Cv; ++c) {
            scalar_t* acc_row = acc_ptr + c * tq;
#pragma omp simd
            for (int64_t r = 0; r < tq; ++r) acc_row[r] *= rescale[r];
          }
        }
        acc.addmm_(v[b].narrow(1, p0, tp), logits.t(), /*beta=*/first ? 0 : 1, /*alpha=*/1);
      }
      scalar_t* out_ptr = out.data_ptr<scalar_t>() + b * Cv * Nq + i0;
      for (int64_t r = 0; r < tq; ++r) rescale[r] = scalar_t(1) / run_sum[r];
      for (int64_t c = 0; c < Cv; ++c) {
        const scalar_t* acc_row = acc_ptr + c * tq;
        scalar_t* out_row = out_ptr + c * Nq;
#pragma omp simd
        for (int64_t r = 0; r < tq; ++r) out_row[r] = acc_row[r] * rescale[r];
      }
      scalar_t* lse_ptr = lse.data_ptr<scalar_t>() + b * Nq + i0;
      for (int64_t r = 0; r < tq; ++r) lse_ptr[r] = run_max[r] + std::log(run_sum[r]);
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& lse, const at::Tensor& delta, double scale, at::Tensor& dq_parts,
                     at::Tensor& dk, at::Tensor* dv) {
  const int64_t B = q.size(0), Nq = q.size(2), Np = k.size(2);
  const int64_t groups = dq_parts.size(1);
  const int64_t n_ptiles = (Np + kPromptTile - 1) / kPromptTile;
  const scalar_t s = static_cast<scalar_t>(scale);
  cpu::parallel_for(0, B * groups, 1, [&](int64_t begin, int64_t end) {
    // Worker threads do not inherit the caller's dispatch state: keep the tile ops below autograd (inputs may
    // require grad; out= ops refuse those).
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const int64_t tile_q = std::min(kQueryTile, Nq), tile_p = std::min(kPromptTile, Np);
    at::Tensor prob_buf = at::empty({tile_q * tile_p}, q.options());
    at::Tensor dprob_buf = at::empty({tile_q * tile_p}, q.options());
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / groups, g = item % groups;
      const int64_t t_begin = n_ptiles * g / groups, t_end = n_ptiles * (g + 1) / groups;
      at::Tensor dq_part = dq_parts[b][g];  // [Cqk, Nq]
      for (int64_t t = t_begin; t < t_end; ++t) {
        const int64_t p0 = t * kPromptTile, tp = std::min(kPromptTile, Np - p0);
        const at::Tensor k_tile = k[b].narrow(1, p0, tp);  // [Cqk, tp]
        const at::Tensor v_tile = v[b].narrow(1, p0, tp);  // [Cv, tp]
        at::Tensor dk_tile = dk[b].narrow(1, p0, tp);      // [Cqk, tp]
        for (int64_t i0 = 0; i0 < Nq; i0 += kQueryTile) {
          const int64_t tq = std::min(kQueryTile, Nq - i0);
          const at::Tensor q_tile = q[b].narrow(1, i0, tq);          // [Cqk, tq]
          const at::Tensor dout_tile = grad_out[b].narrow(1, i0, tq);  // [Cv, tq]
          at::Tensor prob = tile_view(prob_buf, tq, tp);
          at::Tensor dprob = tile_view(dprob_buf, tq, tp);
          at::mm_out(prob, q_tile.t(), k_tile);
          at::mm_out(dprob, dout_tile.t(), v_tile);
          scalar_t* pp = prob.data_ptr<scalar_t>();
          scalar_t* dp = dprob.data_ptr<scalar_t>();
          const scalar_t* lse_row = lse.data_ptr<scalar_t>() + b * Nq + i0;
          const scalar_t* delta_row = delta.data_ptr<scalar_t>() + b * Nq + i0;
          for (int64_t r = 0; r < tq; ++r) {
            scalar_t* prow = pp + r * tp;
            scalar_t* dsrow = dp + r * tp;
            const scalar_t shift = lse_row[r], d = delta_row[r];
#pragma omp simd
            for (int64_t j = 0; j < tp; ++j) {
              prow[j] = fast_exp(s * prow[j] - shift);
              dsrow[j] = prow[j] * (dsrow[j] - d);
            }
          }
          if (dv != nullptr) (*dv)[b].narrow(1, p0, tp).addmm_(dout_tile, prob, 1, 1);
          dk_tile.addmm_(q_tile, dprob, 1, scale);
          dq_part.narrow(1, i0, tq).addmm_(k_tile, dprob.t(), 1, scale);
        }
      }
    }
  });
}

// Half and bfloat16 run in float32 on the CPU; float32 and float64 natively.
at::ScalarType compute_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor> soft_align_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                  const at::Tensor& v_in, double scale) {
  check_soft_align_inputs(q_in, k_in, v_in);
  check_logit_range(q_in, k_in, scale);
  AD_CHECK_CPU(q_in);
  const at::ScalarType ct = compute_type(q_in);
  const at::Tensor q = q_in.to(ct).contiguous(), k = k_in.to(ct).contiguous(), v = v_in.to(ct).contiguous();
  at::Tensor out = at::empty({q.size(0), v.size(1), q.size(2)}, q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(2)}, q.options());
  if (out.numel() > 0 || lse.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "soft_align_cpu", [&] { forward_kernel<scalar_t>(q, k, v, scale, out, lse); });
  }
  return {out.to(q_in.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_align_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& lse_in, const at::Tensor& delta_in, double scale, bool compute_dv) {
  check_soft_align_backward_inputs(grad_out_in, q_in, k_in, v_in, lse_in, delta_in);
  AD_CHECK_CPU(q_in);
  const at::ScalarType ct = compute_type(q_in);
  const at::Tensor q = q_in.to(ct).contiguous(), k = k_in.to(ct).contiguous(), v = v_in.to(ct).contiguous();
  const at::Tensor grad_out = grad_out_in.to(ct).contiguous(), lse = lse_in.to(ct).contiguous();
  const int64_t B = q.size(0), Cqk = q.size(1), Nq = q.size(2), Np = k.size(2);
  const at::Tensor delta = delta_in.to(ct).contiguous();
  // Split each batch element's prompt tiles into groups so that B * groups items keep every thread busy.
  const int64_t n_ptiles = (Np + kPromptTile - 1) / kPromptTile;
  const int64_t threads_per_batch = (at::get_num_threads() + B - 1) / std::max<int64_t>(B, 1);
  const int64_t groups = std::max<int64_t>(1, std::min(n_ptiles, threads_per_batch));
  at::Tensor dq_parts = at::zeros({B, groups, Cqk, Nq}, q.options());
  at::Tensor dk = at::zeros_like(k);
  at::Tensor dv = compute_dv ? at::zeros_like(v) : at::empty({0}, v.options());
  if (B > 0 && Nq > 0 && Np > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "soft_align_backward_cpu", [&] {
      backward_kernel<scalar_t>(grad_out, q, k, v, lse, delta, scale, dq_parts, dk, compute_dv ? &dv : nullptr);
    });
  }
  const at::ScalarType dt = q_in.scalar_type();
  return {dq_parts.sum(1).to(dt), dk.to(dt), dv.to(dt)};
}

}  // namespace
}  // namespace soft_align
}  // namespace ad_fast

TORCH_LIBRARY_IMPL(ad_fast, CPU, m) {
  m.impl("soft_align", &ad_fast::soft_align::soft_align_cpu);
  m.impl("_soft_align_backward", &ad_fast::soft_align::soft_align_backward_cpu);
}
