// The instruction-set choice behind cpu::dispatch (common/cpu_isa.h) and the op that reports it.
#include "common/cpu_isa.h"

#include <torch/library.h>

#include <cstdlib>
#include <string>

namespace ad_fast {
namespace cpu {
namespace {

// The best level this CPU and its OS support (cpuid and the XSAVE state the OS enables, as libgcc reads them).
Isa supported() {
#if defined(AD_FAST_CPU_DISPATCH)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  return avx512 ? Isa::Avx512 : (avx2 ? Isa::Avx2 : Isa::Baseline);
#else
  return Isa::Baseline;
#endif
}

Isa requested(Isa best) {
  const char* env = std::getenv("AD_FAST_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return best;
  const std::string name(env);
  Isa wanted;
  if (name == "default") {
    wanted = Isa::Baseline;
  } else if (name == "avx2") {
    wanted = Isa::Avx2;
  } else if (name == "avx512") {
    wanted = Isa::Avx512;
  } else {
    TORCH_CHECK_VALUE(false, "AD_FAST_CPU_CAPABILITY: expected 'default', 'avx2' or 'avx512', got '", name, "'");
  }
  TORCH_CHECK_VALUE(static_cast<int>(wanted) <= static_cast<int>(best), "AD_FAST_CPU_CAPABILITY=", name,
                    ": this CPU supports only '", isa_name(best), "'");
  return wanted;
}

std::string cpu_capability() { return isa_name(isa()); }

}  // namespace

Isa isa() {
  static const Isa chosen = requested(supported());
  return chosen;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512:
      return "avx512";
    case Isa::Avx2:
      return "avx2";
    default:
      return "default";
  }
}

}  // namespace cpu
}  // namespace ad_fast

TORCH_LIBRARY_FRAGMENT(ad_fast, m) { m.def("_cpu_capability() -> str", &ad_fast::cpu::cpu_capability); }
