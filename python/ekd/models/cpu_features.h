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

// EKD_DISPATCH(NS, kernel<T>(args...)): the call in NS::avx2 where the CPU has AVX2 + FMA (and
// this build has it, compile_twice.h), else in NS::generic
#ifdef EKD_AVX2
#define EKD_DISPATCH(NS, ...) (ekd_cpu::has_avx2() ? NS::avx2::__VA_ARGS__ : NS::generic::__VA_ARGS__)
#else
#define EKD_DISPATCH(NS, ...) NS::generic::__VA_ARGS__
#endif
