// int8 building blocks of dynamic quantization (inference): weights quantized once, per output
// row, symmetric, to int8 with a float32 scale; activations quantized at every use, per row, to
// uint8 with a zero point of 128 (vpdpbusd multiplies unsigned by signed bytes); products
// accumulated exactly in int32, then scaled back to float32.
//
//   weights      s[j] = max_k |w[j,k]| / 127,  qw[j,k] = round(w[j,k] / s[j])  in [-127, 127]
//   activations  t[n] = max_k |x[n,k]| / 127,  qx[n,k] = round(x[n,k] / t[n]) + 128  in [1, 255]
//   product      y[n,j] = float(sum_k qx[n,k] qw[j,k] - 128 sum_k qw[j,k]) * t[n] * s[j]
// evaluated as (float(sum) * t[n]) * s[j]; accumulating into c, the last product and the add are
// one fused multiply-add. round() is to nearest even; a row of zeros gets scale 0 (codes 0, or
// 128), a row with a NaN the default NaN. The sums are exact integers (depth <= kMaxDepth), so the
// native paths (AVX512-VNNI, AVX-VNNI) and the portable one agree bitwise: the float operations
// after the sum run in the same order on all of them.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace fastrnn {
namespace int8 {

constexpr int kPanel = 16;  // outputs per packed panel (one 512-bit vector of int32)
constexpr std::uint8_t kZeroPoint = 128;

// Depth in whole quads (vpdpbusd sums 4 products); the packed size of W.
inline std::int64_t padded_depth(std::int64_t depth) { return (depth + 3) & ~std::int64_t(3); }
inline std::int64_t panel_count(std::int64_t rows) { return (rows + kPanel - 1) / kPanel; }
inline std::int64_t packed_elements(std::int64_t rows, std::int64_t depth) {
    return panel_count(rows) * kPanel * padded_depth(depth);
}
// The sums are exact in int32 while 255 * 127 * depth < 2^31: depth up to 65536 (callers check).
constexpr std::int64_t kMaxDepth = 65536;

// W [rows, depth] float32 (row stride ldw) -> codes packed [panel][depth/4 quads][16 outputs][4],
// scale [panels*16] and code sums wsum [panels*16] (zero past `rows`, and past `depth` in a quad).
void quantize_weights(const float* w, std::int64_t rows, std::int64_t depth, std::int64_t ldw, std::int8_t* packed,
                      float* scale, std::int32_t* wsum);

// One code: round(x / s) to nearest even, clamped to [-127, 127]; 0 where s is 0 or the quotient
// NaN. Every path's scalar elements (and the weights) go through this.
inline int quantize_code(float x, float s) {
    if (s == 0.0f) return 0;
    const float r = std::nearbyint(x / s);
    return r != r ? 0 : int(std::min(127.0f, std::max(-127.0f, r)));
}

struct Kernels {
    const char* name;  // "avx512_vnni", "avx_vnni" or "portable"
    // x [N, depth] (row stride ldx) -> q [N, padded_depth] (row stride ldq; padding = 128), t [N].
    void (*quantize_rows)(std::int64_t N, std::int64_t depth, const float* x, std::int64_t ldx, std::uint8_t* q,
                          std::int64_t ldq, float* t);
    // c[N, cols] (+)= the product above with the first `cols` (<= 16*panels) outputs of the
    // panels: q, t from quantize_rows (depth a multiple of 4), packed, scale, wsum from
    // quantize_weights. Columns past `cols` are neither read nor written.
    void (*gemm)(std::int64_t N, std::int64_t depth, const std::uint8_t* q, std::int64_t ldq, const float* t,
                 const std::int8_t* packed, const float* scale, const std::int32_t* wsum, std::int64_t panels,
                 std::int64_t cols, float* c, std::int64_t ldc, bool accumulate);
};

const Kernels& portable_kernels();
#if defined(__x86_64__) || defined(_M_X64)
const Kernels& avx512_vnni_kernels();  // call only on a CPU with AVX512-VNNI
const Kernels& avx_vnni_kernels();     // call only on a CPU with AVX-VNNI (and AVX2)
#endif

}  // namespace int8
}  // namespace fastrnn
