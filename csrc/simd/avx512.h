// AVX-512F vector of 16 floats with the interface of Scalar<T> (csrc/simd/scalar.h), and 8
// doubles for the float64 GEMM. Included only from csrc/kernels/avx512.cpp, inside its target
// pragma and ISA namespace. The activations are vmath.h's, as for AVX2.
#pragma once
#include <immintrin.h>
#include "scalar.h"
#include "vmath.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

struct Avx512F {
    using value_type = float;
    static constexpr int width = 16;
    static constexpr int regs = 32;
    __m512 v;

    static Avx512F load(const float* p) { return {_mm512_loadu_ps(p)}; }
    static Avx512F set1(float x) { return {_mm512_set1_ps(x)}; }
    static Avx512F zero() { return {_mm512_setzero_ps()}; }
    void store(float* p) const { _mm512_storeu_ps(p, v); }
};

// Free functions, not friends: GCC does not apply the target pragma to friend functions defined
// inside a class.
inline Avx512F operator+(Avx512F a, Avx512F b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Avx512F operator-(Avx512F a, Avx512F b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline Avx512F operator*(Avx512F a, Avx512F b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline Avx512F operator/(Avx512F a, Avx512F b) { return {_mm512_div_ps(a.v, b.v)}; }
inline Avx512F fmadd(Avx512F a, Avx512F b, Avx512F c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline float hsum(Avx512F a) { return _mm512_reduce_add_ps(a.v); }  // the sum of the lanes
inline Avx512F vmax(Avx512F a, Avx512F b) { return {_mm512_max_ps(b.v, a.v)}; }
inline Avx512F step(Avx512F a) {  // 1 if a > 0, 0 if a <= 0, NaN if NaN
    const __mmask16 pos = _mm512_cmp_ps_mask(a.v, _mm512_setzero_ps(), _CMP_GT_OQ);
    const __mmask16 nan = _mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q);
    return {_mm512_mask_blend_ps(nan, _mm512_maskz_mov_ps(pos, _mm512_set1_ps(1.f)), a.v)};
}
inline Avx512F vrelu(Avx512F a) { return {_mm512_max_ps(_mm512_setzero_ps(), a.v)}; }  // NaN stays NaN
// Clamp to [-lim, lim]; max/min return their second operand when one is NaN, so NaN stays NaN.
inline Avx512F vclip(Avx512F a, Avx512F lim) {
    const __m512 neg = _mm512_sub_ps(_mm512_setzero_ps(), lim.v);
    return {_mm512_min_ps(lim.v, _mm512_max_ps(neg, a.v))};
}

inline Avx512F vtanh(Avx512F a) { return tanh_rational(a); }
inline Avx512F vsigmoid(Avx512F a) { return sigmoid_from_tanh(a); }

// 8 doubles: the recurrent GEMM's vector for float64 (float64 cells stay on scalar libm math).
struct Avx512D {
    using value_type = double;
    static constexpr int width = 8;
    static constexpr int regs = 32;
    __m512d v;

    static Avx512D load(const double* p) { return {_mm512_loadu_pd(p)}; }
    static Avx512D set1(double x) { return {_mm512_set1_pd(x)}; }
    static Avx512D zero() { return {_mm512_setzero_pd()}; }
    void store(double* p) const { _mm512_storeu_pd(p, v); }
};
inline Avx512D operator+(Avx512D a, Avx512D b) { return {_mm512_add_pd(a.v, b.v)}; }
inline Avx512D fmadd(Avx512D a, Avx512D b, Avx512D c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
inline double hsum(Avx512D a) { return _mm512_reduce_add_pd(a.v); }

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
