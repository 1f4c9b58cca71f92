// The portable int8 path (csrc/kernels/int8.h), compiled for the baseline ISA: integer sums are
// exact, and the float steps run in the native path's order, so both give the same bits.
#include <algorithm>
#include <cmath>
#include <limits>

#include "int8.h"

namespace fastrnn {
namespace int8 {

namespace {

using i64 = std::int64_t;

// max |x| / 127 over a row; NaN propagates (a NaN row gives NaN results, as float32 would).
float row_scale(const float* x, i64 n) {
    float m = 0.0f;
    for (i64 k = 0; k < n; ++k) {
        const float a = std::fabs(x[k]);
        if (a != a) return std::numeric_limits<float>::quiet_NaN();
        m = a > m ? a : m;
    }
    return m / 127.0f;
}

void quantize_rows_portable(i64 N, i64 depth, const float* x, i64 ldx, std::uint8_t* q, i64 ldq, float* t) {
    const i64 dp = padded_depth(depth);
    for (i64 n = 0; n < N; ++n) {
        const float s = row_scale(x + n * ldx, depth);
        t[n] = s;
        for (i64 k = 0; k < depth; ++k) q[n * ldq + k] = std::uint8_t(quantize_code(x[n * ldx + k], s) + kZeroPoint);
        for (i64 k = depth; k < dp; ++k) q[n * ldq + k] = kZeroPoint;
    }
}

void gemm_portable(i64 N, i64 depth, const std::uint8_t* q, i64 ldq, const float* t, const std::int8_t* packed,
                   const float* scale, const std::int32_t* wsum, i64 panels, i64 cols, float* c, i64 ldc,
                   bool accumulate) {
    for (i64 n = 0; n < N; ++n)
        for (i64 p = 0; p < panels; ++p)
            for (int j = 0; j < kPanel && p * kPanel + j < cols; ++j) {
                const std::int8_t* w = packed + p * depth * kPanel + 4 * j;
                std::int32_t acc = 0;  // exact for depth <= kMaxDepth
                for (i64 k = 0; k < depth; ++k) acc += std::int32_t(q[n * ldq + k]) * w[(k / 4) * 4 * kPanel + k % 4];
                const i64 col = p * kPanel + j;
                // acc - 128 * wsum wrapping as the vector instructions do (never undefined)
                const auto wrapped = std::int32_t(std::uint32_t(acc) - (std::uint32_t(wsum[col]) << 7));
                const float y = float(wrapped) * t[n];
                float& out = c[n * ldc + col];
                out = accumulate ? std::fma(y, scale[col], out) : y * scale[col];  // one rounding, as vfmadd
            }
}

}  // namespace

const Kernels& portable_kernels() {
    static const Kernels k{"portable", quantize_rows_portable, gemm_portable};
    return k;
}

void quantize_weights(const float* w, i64 rows, i64 depth, i64 ldw, std::int8_t* packed, float* scale,
                      std::int32_t* wsum) {
    const i64 quads = padded_depth(depth) / 4, panels = panel_count(rows);
    for (i64 r = 0; r < panels * kPanel; ++r) {
        scale[r] = r < rows ? row_scale(w + r * ldw, depth) : 0.0f;
        wsum[r] = 0;
    }
    for (i64 p = 0; p < panels; ++p)
        for (i64 qd = 0; qd < quads; ++qd)
            for (int j = 0; j < kPanel; ++j)
                for (int e = 0; e < 4; ++e) {
                    const i64 r = p * kPanel + j, k = 4 * qd + e;
                    const int v = r < rows && k < depth ? quantize_code(w[r * ldw + k], scale[r]) : 0;
                    *packed++ = std::int8_t(v);
                    wsum[r] += v;
                }
}

}  // namespace int8
}  // namespace fastrnn
