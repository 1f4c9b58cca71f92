// Scalar "vector" of width 1: the portable reference type the cells are written against.
// Every ISA provides a type with the same interface (load/store/set1, + - * /, fma, exp,
// sigmoid, tanh, relu helpers), so the cell math in csrc/cells/ is written once.
#pragma once
#include <cmath>
#include <cstdint>

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

// Per-ISA namespace: each ISA's translation unit gets its own copies of every inline helper,
// so the linker can never pick an AVX2-compiled copy for the scalar path.
namespace fastrnn {
namespace FASTRNN_ISA_NS {

template <class T>
struct Scalar {
    using value_type = T;
    static constexpr int width = 1;
    static constexpr int regs = 16;
    T v;

    static Scalar load(const T* p) { return {*p}; }
    static Scalar set1(T x) { return {x}; }
    static Scalar zero() { return {T(0)}; }
    void store(T* p) const { *p = v; }

    friend Scalar operator+(Scalar a, Scalar b) { return {a.v + b.v}; }
    friend Scalar operator-(Scalar a, Scalar b) { return {a.v - b.v}; }
    friend Scalar operator*(Scalar a, Scalar b) { return {a.v * b.v}; }
    friend Scalar operator/(Scalar a, Scalar b) { return {a.v / b.v}; }
    // a*b + c; kept as separate ops so the scalar path is bit-stable across compilers.
    friend Scalar fmadd(Scalar a, Scalar b, Scalar c) { return {a.v * b.v + c.v}; }
    friend Scalar vmax(Scalar a, Scalar b) { return {a.v > b.v ? a.v : b.v}; }
    // Heaviside step, the relu derivative: 1 where a > 0, 0 where a <= 0, NaN stays NaN so that
    // a NaN state shows up in the gradient instead of being silently zeroed.
    friend Scalar step(Scalar a) { return {a.v > T(0) ? T(1) : (a.v == a.v ? T(0) : a.v)}; }
    friend Scalar vsigmoid(Scalar a) { return {T(1) / (T(1) + std::exp(-a.v))}; }
    friend Scalar vtanh(Scalar a) { return {std::tanh(a.v)}; }
    friend Scalar vrelu(Scalar a) { return {a.v > T(0) ? a.v : (a.v == a.v ? T(0) : a.v)}; }
    // Clamp to [-lim, lim]; NaN stays NaN (both comparisons are false).
    friend Scalar vclip(Scalar a, Scalar lim) { return {a.v < -lim.v ? -lim.v : (a.v > lim.v ? lim.v : a.v)}; }
};

// Runs f(V tag, j) over j = 0..n-1 in steps of V::width, then the tail with the scalar type.
// Cells use it so the same lambda body serves the vector body and the remainder.
template <class V, class F>
inline void for_lanes(std::int64_t n, F&& f) {
    using T = typename V::value_type;
    std::int64_t j = 0;
    if constexpr (V::width > 1) {
        for (; j + V::width <= n; j += V::width) f(V{}, j);
    }
    for (; j < n; ++j) f(Scalar<T>{}, j);
}

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
