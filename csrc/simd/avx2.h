// AVX2+FMA vector of 8 floats with the interface of Scalar<T> (csrc/simd/scalar.h).
// Included only from csrc/kernels/avx2.cpp, inside its target pragma and ISA namespace.
//
// The activations are vmath.h's (written once for every vector type, with their error bounds).
#pragma once
#include <immintrin.h>
#include "scalar.h"
#include "vmath.h"

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
inline float hsum(Avx2F a) {  // the sum of the lanes
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}
// The lane sums of v[0..4) into out[0..4): three horizontal adds for four sums (the streaming
// products' reduction, csrc/kernels/gemm.h). Each sum adds its lanes in the same order whatever
// the other three vectors hold.
inline void hsum4(const Avx2F* v, float* out) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(v[0].v, v[1].v), _mm256_hadd_ps(v[2].v, v[3].v));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}
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

inline Avx2F vtanh(Avx2F a) { return tanh_rational(a); }
inline Avx2F vsigmoid(Avx2F a) { return sigmoid_from_tanh(a); }

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
inline double hsum(Avx2D a) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a.v), _mm256_extractf128_pd(a.v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
