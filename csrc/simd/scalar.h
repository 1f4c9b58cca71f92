// Scalar "vector" of width 1: the portable reference type the cells are written against.
// Every ISA provides a type with the same interface (load/store/set1, + - * /, fma, exp,
// sigmoid, tanh, relu helpers), so the cell math in csrc/cells/ is written once.
#pragma once
#include <cmath>
#include <cstdint>

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

// Marks the helpers the cells use so nvcc also compiles them for the GPU (csrc/cuda); expands
// to nothing for the host compilers.
#ifndef FASTRNN_HD
#if defined(__CUDACC__)
#define FASTRNN_HD __host__ __device__
#else
#define FASTRNN_HD
#endif
#endif

// Called at each load and store of the scalar type: the CUDA host emulator (csrc/cuda/exec.h)
// makes it a point where the emulated thread may yield to another; nothing anywhere else.
#ifndef FASTRNN_SCALAR_ACCESS
#define FASTRNN_SCALAR_ACCESS()
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

    FASTRNN_HD static Scalar load(const T* p) {
        FASTRNN_SCALAR_ACCESS();
        return {*p};
    }
    FASTRNN_HD static Scalar set1(T x) { return {x}; }
    FASTRNN_HD static Scalar zero() { return {T(0)}; }
    FASTRNN_HD void store(T* p) const {
        FASTRNN_SCALAR_ACCESS();
        *p = v;
    }

    FASTRNN_HD friend Scalar operator+(Scalar a, Scalar b) { return {a.v + b.v}; }
    FASTRNN_HD friend Scalar operator-(Scalar a, Scalar b) { return {a.v - b.v}; }
    FASTRNN_HD friend Scalar operator*(Scalar a, Scalar b) { return {a.v * b.v}; }
    FASTRNN_HD friend Scalar operator/(Scalar a, Scalar b) { return {a.v / b.v}; }
    // a*b + c; kept as separate ops so the scalar path is bit-stable across compilers.
    FASTRNN_HD friend Scalar fmadd(Scalar a, Scalar b, Scalar c) { return {a.v * b.v + c.v}; }
    FASTRNN_HD friend T hsum(Scalar a) { return a.v; }  // the sum of the lanes (one)
    FASTRNN_HD friend Scalar vmax(Scalar a, Scalar b) { return {a.v > b.v ? a.v : b.v}; }
    // Heaviside step, the relu derivative: 1 where a > 0, 0 where a <= 0, NaN stays NaN so that
    // a NaN state shows up in the gradient instead of being silently zeroed.
    FASTRNN_HD friend Scalar step(Scalar a) { return {a.v > T(0) ? T(1) : (a.v == a.v ? T(0) : a.v)}; }
    FASTRNN_HD friend Scalar vsigmoid(Scalar a) { return {T(1) / (T(1) + std::exp(-a.v))}; }
    FASTRNN_HD friend Scalar vtanh(Scalar a) { return {std::tanh(a.v)}; }
    FASTRNN_HD friend Scalar vrelu(Scalar a) { return {a.v > T(0) ? a.v : (a.v == a.v ? T(0) : a.v)}; }
    // Clamp to [-lim, lim]; NaN stays NaN (both comparisons are false).
    FASTRNN_HD friend Scalar vclip(Scalar a, Scalar lim) { return {a.v < -lim.v ? -lim.v : (a.v > lim.v ? lim.v : a.v)}; }
};

// Runs f(V tag, j) over j = 0..n-1 in steps of V::width, then the tail with the scalar type.
// Cells use it so the same lambda body serves the vector body and the remainder.
template <class V, class F>
FASTRNN_HD inline void for_lanes(std::int64_t n, F&& f) {
    using T = typename V::value_type;
    std::int64_t j = 0;
    if constexpr (V::width > 1) {
        for (; j + V::width <= n; j += V::width) f(V{}, j);
    }
    for (; j < n; ++j) f(Scalar<T>{}, j);
}

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
