// Runtime choice of the instruction set for the hot CPU loops, so that one portable build (no -march) runs
// everywhere and still uses AVX2 / AVX-512 where the CPU has them.
//
//   cpu::dispatch([&] { ...loop... });
//   cpu::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) { ...loop... });
//
// compile the lambda's body three times on x86-64: for the build's baseline, for AVX2+FMA and for AVX-512
// (F, VL, BW, DQ). Each clone is a `flatten` function with a `target` attribute, so the body and every helper it
// calls are inlined into it and vectorised for that instruction set; nothing outside the clones uses AVX2 or
// AVX-512 unless the build asks for it (AD_FAST_MARCH). cpu::isa() picks the clone once per process: the best
// the CPU and OS support, lowered by AD_FAST_CPU_CAPABILITY=default|avx2|avx512 (the names torch's
// ATEN_CPU_CAPABILITY uses; a level above what the CPU supports is refused). A lambda handed to
// at::parallel_for is a separate function that no clone can inline: use cpu::parallel_for, which dispatches
// inside each chunk. A helper marked noinline is not inlined either; it needs its own dispatch.
// Other architectures build the body once.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

namespace ad_fast {
namespace cpu {

enum class Isa : int { Baseline = 0, Avx2 = 1, Avx512 = 2 };

// The instruction set the clones run with in this process (decided on first use).
Isa isa();

// "default", "avx2" or "avx512".
const char* isa_name(Isa isa);

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define AD_FAST_CPU_DISPATCH 1

template <typename F>
__attribute__((flatten)) auto run_baseline(const F& body) {
  return body();
}

template <typename F>
__attribute__((flatten, target("avx2,fma"))) auto run_avx2(const F& body) {
  return body();
}

template <typename F>
__attribute__((flatten, target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))) auto run_avx512(const F& body) {
  return body();
}

// body() compiled for the instruction set isa() chose; returns what body returns.
template <typename F>
auto dispatch(const F& body) {
  switch (isa()) {
    case Isa::Avx512:
      return run_avx512(body);
    case Isa::Avx2:
      return run_avx2(body);
    default:
      return run_baseline(body);
  }
}

#else

template <typename F>
auto dispatch(const F& body) {
  return body();
}

#endif

// at::parallel_for whose chunks run `body(begin, end)` through dispatch().
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& body) {
  at::parallel_for(begin, end, grain, [&](int64_t chunk_begin, int64_t chunk_end) {
    dispatch([&] { body(chunk_begin, chunk_end); });
  });
}

}  // namespace cpu
}  // namespace ad_fast
