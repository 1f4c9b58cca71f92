// AVX2+FMA vector of 8 floats with the interface of Scalar<T> (csrc/simd/scalar.h).
// Included only from csrc/kernels/avx2.cpp, inside its target pragma and ISA namespace.
//
// Accuracy (float32, tested in tests/test_simd.py against the float64 functions over every
// float in [-30, 30] on a fine grid plus |x| up to 1e30, +-inf and NaN):
//   exp: Cephes polynomial, ~1 ulp;  sigmoid = 1/(1+exp(-x)): max abs error < 2e-7;
//   tanh: Cephes odd polynomial for |x| < 0.625, 1 - 2/(exp(2|x|)+1) above: max abs error < 2e-7.
// NaN propagates (clamps keep NaN by putting x in the second operand of max/min).
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
    __m256 v;

    static Avx2F load(const float* p) { return {_mm256_loadu_ps(p)}; }
    static Avx2F set1(float x) { return {_mm256_set1_ps(x)}; }
    static Avx2F zero() { return {_mm256_setzero_ps()}; }
    void store(float* p) const { _mm256_storeu_ps(p, v); }

    static __m256 exp(__m256 x) {
        x = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), _mm256_max_ps(_mm256_set1_ps(-87.3365f), x));
        __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
        r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
        __m256 y = _mm256_set1_ps(1.9875691500E-4f);
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507E-3f));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073E-3f));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894E-2f));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459E-1f));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201E-1f));
        y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
        // 2^n through the exponent bits; n = 128 (x near the top clamp) gives +inf, which the
        // callers below turn into the right limit (sigmoid -> 0, tanh -> 1).
        __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    }
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

inline Avx2F vexp(Avx2F a) { return {Avx2F::exp(a.v)}; }
inline Avx2F vsigmoid(Avx2F a) {
    const __m256 one = _mm256_set1_ps(1.f);
    return {_mm256_div_ps(one, _mm256_add_ps(one, Avx2F::exp(_mm256_sub_ps(_mm256_setzero_ps(), a.v))))};
}
inline Avx2F vtanh(Avx2F a) {
    const __m256 sign = _mm256_set1_ps(-0.f), one = _mm256_set1_ps(1.f);
    __m256 x = a.v, ax = _mm256_andnot_ps(sign, x);
    __m256 e = Avx2F::exp(_mm256_add_ps(ax, ax));
    __m256 big = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.f), _mm256_add_ps(e, one)));
    big = _mm256_or_ps(big, _mm256_and_ps(sign, x));
    __m256 z = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-5.70498872745E-3f);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954E-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531E-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036E-1f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422E-1f));
    __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
    return {_mm256_blendv_ps(big, small, _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_LT_OQ))};
}

// 4 doubles: the recurrent GEMM's vector for float64 (the float64 cells stay on the accurate
// scalar libm math, so only what the microkernel needs is here).
struct Avx2D {
    using value_type = double;
    static constexpr int width = 4;
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
