// AVX2+FMA vector of 8 floats with the interface of Scalar<T> (csrc/simd/scalar.h).
// Included only from csrc/kernels/avx2.cpp, inside its target pragma and ISA namespace.
//
// Accuracy (float32, tested in tests/test_simd.py against the float64 functions on a dense grid
// of [-30, 30], |x| up to 1e30, +-inf and NaN): tanh max abs error ~3e-7, sigmoid ~1.5e-7 (the
// contract is 2e-6). NaN propagates (clamps keep NaN by putting x in the second operand).
#pragma once
#include <immintrin.h>
#include "scalar.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

struct Avx2F {
    using value_type = float;
    static constexpr int width = 8;
    static constexpr int regs = 16;
    __m256 v;

    static Avx2F load(const float* p) { return {_mm256_loadu_ps(p)}; }
    static Avx2F set1(float x) { return {_mm256_set1_ps(x)}; }
    static Avx2F zero() { return {_mm256_setzero_ps()}; }
    void store(float* p) const { _mm256_storeu_ps(p, v); }
};

// Free functions, not friends: GCC does not apply the target pragma to friend functions defined
// inside a class, and the intrinsics then fail to inline.
inline Avx2F operator+(Avx2F a, Avx2F b) { return {_mm256_add_ps(a.v, b.v)}; }
inline Avx2F operator-(Avx2F a, Avx2F b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline Avx2F operator*(Avx2F a, Avx2F b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline Avx2F operator/(Avx2F a, Avx2F b) { return {_mm256_div_ps(a.v, b.v)}; }
inline Avx2F fmadd(Avx2F a, Avx2F b, Avx2F c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline Avx2F vmax(Avx2F a, Avx2F b) { return {_mm256_max_ps(b.v, a.v)}; }
inline Avx2F step(Avx2F a) {  // 1 if a > 0, 0 if a <= 0, NaN if NaN
    __m256 pos = _mm256_and_ps(_mm256_cmp_ps(a.v, _mm256_setzero_ps(), _CMP_GT_OQ), _mm256_set1_ps(1.f));
    __m256 nan = _mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q);
    return {_mm256_blendv_ps(pos, a.v, nan)};
}
inline Avx2F vrelu(Avx2F a) { return {_mm256_max_ps(_mm256_setzero_ps(), a.v)}; }  // NaN stays NaN
// Clamp to [-lim, lim]; max/min return their second operand when one is NaN, so NaN stays NaN.
inline Avx2F vclip(Avx2F a, Avx2F lim) {
    const __m256 neg = _mm256_sub_ps(_mm256_setzero_ps(), lim.v);
    return {_mm256_min_ps(lim.v, _mm256_max_ps(neg, a.v))};
}

// tanh as a [13/6] rational function on [-7.9988, 7.9988] (Eigen's ptanh_float coefficients;
// beyond the clamp tanh rounds to +-1 within the error bound): max abs error ~3e-7, one division,
// no exp. The clamp keeps NaN (max/min return their second operand when one is NaN).
inline __m256 tanh_ps(__m256 x) {
    const __m256 c = _mm256_set1_ps(7.99881172180175781f);
    x = _mm256_min_ps(c, _mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), c), x));
    const __m256 x2 = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-2.76076847742355e-16f);
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(2.00018790482477e-13f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-8.60467152213735e-11f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(5.12229709037114e-08f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(1.48572235717979e-05f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(6.37261928875436e-04f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(4.89352455891786e-03f));
    p = _mm256_mul_ps(p, x);
    __m256 q = _mm256_set1_ps(1.19825839466702e-06f);
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(1.18534705686654e-04f));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(2.26843463243900e-03f));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(4.89352518554385e-03f));
    return _mm256_div_ps(p, q);
}
inline Avx2F vtanh(Avx2F a) { return {tanh_ps(a.v)}; }
// sigmoid(x) = (1 + tanh(x/2)) / 2: absolute error ~1.5e-7 (relative error grows in the far
// negative tail, where sigmoid itself is below 1e-6).
inline Avx2F vsigmoid(Avx2F a) {
    const __m256 half = _mm256_set1_ps(0.5f);
    return {_mm256_fmadd_ps(half, tanh_ps(_mm256_mul_ps(half, a.v)), half)};
}

// 4 doubles: the recurrent GEMM's vector for float64 (the float64 cells stay on the accurate
// scalar libm math, so only what the microkernel needs is here).
struct Avx2D {
    using value_type = double;
    static constexpr int width = 4;
    static constexpr int regs = 16;
    __m256d v;

    static Avx2D load(const double* p) { return {_mm256_loadu_pd(p)}; }
    static Avx2D set1(double x) { return {_mm256_set1_pd(x)}; }
    static Avx2D zero() { return {_mm256_setzero_pd()}; }
    void store(double* p) const { _mm256_storeu_pd(p, v); }
};
inline Avx2D operator+(Avx2D a, Avx2D b) { return {_mm256_add_pd(a.v, b.v)}; }
inline Avx2D fmadd(Avx2D a, Avx2D b, Avx2D c) { return {_mm256_fmadd_pd(a.v, b.v, c.v)}; }

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
