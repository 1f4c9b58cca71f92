// The int8 path on AVX-VNNI (256-bit vpdpbusd, VEX-encoded: CPUs with AVX2 but not AVX512-VNNI,
// such as Alder Lake or Sierra Forest). The packing is the 16-output panels of csrc/kernels/int8.h,
// each panel two ymm accumulators per row; same results as the other paths. Built with a target
// pragma; dispatch calls it only on a CPU that has the instructions.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "target.h"
#include "blocks.h"
#include "int8.h"

FASTRNN_TARGET_BEGIN("avx2,fma,avxvnni")

namespace fastrnn {
namespace int8 {

namespace {

using i64 = std::int64_t;

float row_scale(const float* x, i64 n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
    i64 k = 0;
    for (; k + 8 <= n; k += 8) {
        const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k));
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
        m = _mm256_max_ps(a, m);  // a NaN lane keeps m (the second operand)
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, m);
    float mx = 0.0f;
    bool any_nan = _mm256_movemask_ps(nan) != 0;
    for (float v : lanes) mx = std::max(mx, v);
    for (; k < n; ++k) {
        const float a = std::fabs(x[k]);
        any_nan = any_nan || a != a;
        mx = a > mx ? a : mx;
    }
    return any_nan ? std::numeric_limits<float>::quiet_NaN() : mx / 127.0f;
}

void quantize_rows_avx2(i64 N, i64 depth, const float* x, i64 ldx, std::uint8_t* q, i64 ldq, float* t) {
    const i64 dp = padded_depth(depth);
    for (i64 n = 0; n < N; ++n) {
        const float* xr = x + n * ldx;
        std::uint8_t* qr = q + n * ldq;
        const float s = row_scale(xr, depth);
        t[n] = s;
        const __m256 vs = _mm256_set1_ps(s), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
        i64 k = 0;
        if (s != 0.0f)
            for (; k + 8 <= depth; k += 8) {
                __m256 r = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(xr + k), vs),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                r = _mm256_and_ps(r, _mm256_cmp_ps(r, r, _CMP_ORD_Q));  // NaN -> 0
                r = _mm256_min_ps(hi, _mm256_max_ps(lo, r));
                alignas(32) std::int32_t c[8];
                _mm256_store_si256(reinterpret_cast<__m256i*>(c), _mm256_cvtps_epi32(r));
                for (int e = 0; e < 8; ++e) qr[k + e] = std::uint8_t(c[e] + kZeroPoint);
            }
        for (; k < depth; ++k) qr[k] = std::uint8_t(quantize_code(xr[k], s) + kZeroPoint);
        for (; k < dp; ++k) qr[k] = kZeroPoint;
    }
}

// acc += vpdpbusd(a, b), VEX-encoded, through inline asm (GCC 12 kept the accumulators of the
// intrinsic in memory; see int8_avx512.cpp).
inline void dpbusd(__m256i& acc, __m256i a, __m256i b) { asm("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(a), "x"(b)); }

// MR rows x one panel (two ymm accumulators per row: outputs 0-7 and 8-15), MR up to 6: 12
// accumulators, two panel loads and a broadcast in the 16 registers. Every loop unrolled.
template <int MR>
void block(i64 quads, const std::uint8_t* q, i64 ldq, const float* t, const std::int8_t* w, const float* scale,
           const std::int32_t* wsum, i64 cols, float* c, i64 ldc, bool accumulate) {
    __m256i acc[MR][2];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (i64 qd = 0; qd < quads; ++qd) {
        const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + qd * 4 * kPanel));
        const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + qd * 4 * kPanel + 32));
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            std::int32_t quad;
            std::memcpy(&quad, q + r * ldq + 4 * qd, 4);
            const __m256i a = _mm256_set1_epi32(quad);
            dpbusd(acc[r][0], a, b0);
            dpbusd(acc[r][1], a, b1);
        }
    }
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
        if (8 * h >= cols) break;
        // lanes below `cols` (outputs past it stay as they are)
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(std::min<i64>(cols - 8 * h, 8))),
                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const __m256i corr = _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wsum + 8 * h)), 7);
        const __m256 sw = _mm256_loadu_ps(scale + 8 * h);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            float* out = c + r * ldc + 8 * h;
            const __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(acc[r][h], corr)), _mm256_set1_ps(t[r]));
            _mm256_maskstore_ps(out, m,
                                accumulate ? _mm256_fmadd_ps(y, sw, _mm256_maskload_ps(out, m)) : _mm256_mul_ps(y, sw));
        }
    }
}

void gemm_avx2(i64 N, i64 depth, const std::uint8_t* q, i64 ldq, const float* t, const std::int8_t* packed,
               const float* scale, const std::int32_t* wsum, i64 panels, i64 cols, float* c, i64 ldc, bool accumulate) {
    const i64 quads = depth / 4, stride = depth * kPanel;
    panels = std::min(panels, (cols + kPanel - 1) / kPanel);
    for_blocks<6>(N, [&](auto rows, i64 n) {
        for (i64 p = 0; p < panels; ++p)
            block<decltype(rows)::value>(quads, q + n * ldq, ldq, t + n, packed + p * stride, scale + p * kPanel,
                                         wsum + p * kPanel, cols - p * kPanel, c + n * ldc + p * kPanel, ldc, accumulate);
    });
}

}  // namespace

const Kernels& avx_vnni_kernels() {
    static const Kernels k{"avx_vnni", quantize_rows_avx2, gemm_avx2};
    return k;
}

}  // namespace int8
}  // namespace fastrnn

FASTRNN_TARGET_END
#endif  // x86-64
