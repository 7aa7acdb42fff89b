// Whether ekd's operators may use AVX2 + FMA on this CPU: their loops are compiled twice, once
// for any x86-64 and once for AVX2 + FMA (GCC), and pick one at run time with `has_avx2()`.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EKD_AVX2 1
#endif

namespace ekd_cpu {

inline bool has_avx2() {
#ifdef EKD_AVX2
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

}  // namespace ekd_cpu
