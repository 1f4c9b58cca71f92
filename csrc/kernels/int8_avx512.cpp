// The native int8 path (AVX512-VNNI): vpdpbusd sums four uint8 x int8 products into int32.
// Same results as the portable path (csrc/kernels/int8.h). Built with a target pragma; dispatch
// calls it only on a CPU that has the instructions.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "target.h"
#include "blocks.h"
#include "int8.h"

FASTRNN_TARGET_BEGIN("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")

namespace fastrnn {
namespace int8 {

namespace {

using i64 = std::int64_t;

inline __mmask16 tail_mask(i64 left) { return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1); }

// The portable path's row_scale: max |x| / 127, NaN if any element is NaN.
float row_scale(const float* x, i64 n) {
    __m512 m = _mm512_setzero_ps();
    __mmask16 nan = 0;
    for (i64 k = 0; k < n; k += 16) {
        const __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(tail_mask(n - k), x + k));
        nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
        m = _mm512_max_ps(a, m);  // a NaN lane keeps m (the second operand)
    }
    return nan ? std::numeric_limits<float>::quiet_NaN() : _mm512_reduce_max_ps(m) / 127.0f;
}

void quantize_rows_native(i64 N, i64 depth, const float* x, i64 ldx, std::uint8_t* q, i64 ldq, float* t) {
    const i64 dp = padded_depth(depth);
    for (i64 n = 0; n < N; ++n) {
        const float* xr = x + n * ldx;
        std::uint8_t* qr = q + n * ldq;
        const float s = row_scale(xr, depth);
        t[n] = s;
        const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
        for (i64 k = 0; k < depth; k += 16) {
            const __mmask16 m = tail_mask(depth - k);
            __m512i c = _mm512_set1_epi32(kZeroPoint);
            if (s != 0.0f) {
                __m512 r = _mm512_roundscale_ps(_mm512_div_ps(_mm512_maskz_loadu_ps(m, xr + k), vs),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r, r, _CMP_ORD_Q), r);  // NaN -> 0
                r = _mm512_min_ps(hi, _mm512_max_ps(lo, r));
                c = _mm512_add_epi32(_mm512_cvtps_epi32(r), c);
            }
            _mm512_mask_cvtepi32_storeu_epi8(qr + k, m, c);
        }
        for (i64 k = depth; k < dp; ++k) qr[k] = kZeroPoint;
    }
}

// acc += vpdpbusd(a, b) through inline asm: with _mm512_dpbusd_epi32 GCC 12 kept the 6 x 4 block's
// accumulators in memory (a copy and a store per instruction, the GEMM at ~40 % of the unit's
// rate); "+v" holds each accumulator in one register.
inline void dpbusd(__m512i& acc, __m512i a, __m512i b) { asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b)); }

// MR rows x NP panels of int32 accumulators (up to 6 x 4 = 24 registers); per quad NP panel loads and
// MR broadcasts of four activation bytes. Every loop unrolled (acc stays in registers).
template <int MR, int NP>
void block(i64 quads, const std::uint8_t* q, i64 ldq, const float* t, const std::int8_t* w, i64 panel_stride,
           const float* scale, const std::int32_t* wsum, i64 cols, float* c, i64 ldc, bool accumulate) {
    __m512i acc[MR][NP];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_setzero_si512();
    for (i64 qd = 0; qd < quads; ++qd) {
        __m512i b[NP];
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p) b[p] = _mm512_loadu_si512(w + p * panel_stride + qd * 4 * kPanel);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            std::int32_t quad;
            std::memcpy(&quad, q + r * ldq + 4 * qd, 4);
            const __m512i a = _mm512_set1_epi32(quad);
#pragma GCC unroll 8
            for (int p = 0; p < NP; ++p) dpbusd(acc[r][p], a, b[p]);
        }
    }
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) {
        if (p * kPanel >= cols) break;
        const __mmask16 m = tail_mask(cols - p * kPanel);  // the outputs past `cols` stay as they are
        const __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512(wsum + p * kPanel), 7);  // 128 * wsum
        const __m512 sw = _mm512_loadu_ps(scale + p * kPanel);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            float* out = c + r * ldc + p * kPanel;
            const __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][p], corr)), _mm512_set1_ps(t[r]));
            _mm512_mask_storeu_ps(out, m,
                                  accumulate ? _mm512_fmadd_ps(y, sw, _mm512_maskz_loadu_ps(m, out)) : _mm512_mul_ps(y, sw));
        }
    }
}

void gemm_native(i64 N, i64 depth, const std::uint8_t* q, i64 ldq, const float* t, const std::int8_t* packed,
                 const float* scale, const std::int32_t* wsum, i64 panels, i64 cols, float* c, i64 ldc, bool accumulate) {
    const i64 quads = depth / 4, stride = depth * kPanel;
    panels = std::min(panels, (cols + kPanel - 1) / kPanel);
    for_blocks<6>(N, [&](auto rows, i64 n) {
        for_blocks<4>(panels, [&](auto np, i64 p) {
            block<decltype(rows)::value, decltype(np)::value>(quads, q + n * ldq, ldq, t + n, packed + p * stride, stride,
                                          scale + p * kPanel, wsum + p * kPanel, cols - p * kPanel, c + n * ldc + p * kPanel, ldc,
                                          accumulate);
        });
    });
}

}  // namespace

const Kernels& avx512_vnni_kernels() {
    static const Kernels k{"avx512_vnni", quantize_rows_native, gemm_native};
    return k;
}

}  // namespace int8
}  // namespace fastrnn

FASTRNN_TARGET_END
#endif  // x86-64
