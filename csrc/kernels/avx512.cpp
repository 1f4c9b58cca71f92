// AVX-512F kernels: float32 GEMM and cells on 16-wide vectors (the math of avx2.h); float64
// GEMM on 8-wide vectors while its cells stay on the accurate scalar math (full float64 accuracy).
// Built with a target pragma, not per-file flags, so the rest of the library stays baseline.
#if defined(__x86_64__) || defined(_M_X64)
#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>

#include "target.h"
#include "../dispatch/dispatch.h"

FASTRNN_TARGET_BEGIN("avx512f,avx2,fma")

#define FASTRNN_ISA_NS isa_avx512
#include "../simd/avx512.h"
#include "kernel_set.h"

namespace fastrnn {

template <>
KernelSet<float> avx512_kernels<float>() {
    return isa_avx512::make_kernel_set<isa_avx512::Avx512F, isa_avx512::Avx512F, float>();
}
template <>
KernelSet<double> avx512_kernels<double>() {
    return isa_avx512::make_kernel_set<isa_avx512::Avx512D, isa_avx512::Scalar<double>, double>();
}

}  // namespace fastrnn

FASTRNN_TARGET_END
#endif  // x86-64
