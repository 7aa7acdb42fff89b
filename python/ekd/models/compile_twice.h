// Includes the file of loops named by EKD_KERNELS twice, into namespaces `generic` and `avx2` of
// the namespace it is included in: once for any CPU and once compiled for AVX2 + FMA (GCC only),
// one of which is picked at run time with ekd_cpu::has_avx2(). No include guard: included once
// per file of loops, after cpu_features.h.
namespace generic {
#include EKD_KERNELS
}
#ifdef EKD_AVX2
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include EKD_KERNELS
}
#pragma GCC pop_options
#endif
#undef EKD_KERNELS
