// AVX2+FMA kernels: float32 GEMM and cells on 8-wide vectors with fast exp/sigmoid/tanh; float64
// GEMM on 4-wide vectors while its cells stay on the accurate scalar math (full float64 accuracy).
// Built with a target pragma, not per-file flags, so the rest of the library stays baseline.
#if defined(__x86_64__) || defined(_M_X64)
#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>

#include "target.h"
#include "../dispatch/dispatch.h"

FASTRNN_TARGET_BEGIN("avx2,fma")

#define FASTRNN_ISA_NS isa_avx2
#include "../simd/avx2.h"
#include "kernel_set.h"

namespace fastrnn {

template <>
KernelSet<float> avx2_kernels<float>() {
    return isa_avx2::make_kernel_set<isa_avx2::Avx2F, isa_avx2::Avx2F, float>();
}
template <>
KernelSet<double> avx2_kernels<double>() {
    return isa_avx2::make_kernel_set<isa_avx2::Avx2D, isa_avx2::Scalar<double>, double>();
}

}  // namespace fastrnn

FASTRNN_TARGET_END
#endif  // x86-64
