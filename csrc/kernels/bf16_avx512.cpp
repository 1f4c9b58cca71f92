// The native bf16 path (AVX512-BF16): vcvtneps2bf16 rounds, vdpbf16ps multiplies pairs with
// float32 accumulation. Same results as the portable path (csrc/kernels/bf16.h). Built with a
// target pragma; dispatch calls it only on a CPU that has the instructions.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstring>

#include "target.h"
#include "bf16.h"
#include "blocks.h"

FASTRNN_TARGET_BEGIN("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")

namespace fastrnn {
namespace bf16 {

namespace {

using i64 = std::int64_t;

void round_native(const float* x, i64 n, bf16_t* out) {
    i64 i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256bh r = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + i));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), reinterpret_cast<const __m256i&>(r));
    }
    if (i < n) {
        const __mmask16 m = __mmask16((1u << (n - i)) - 1);
        const __m256bh r = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i));
        _mm256_mask_storeu_epi16(out + i, m, reinterpret_cast<const __m256i&>(r));
    }
}

// acc += vdpbf16ps(a, b) through inline asm: with _mm512_dpbf16_ps GCC 12 kept the block's
// accumulators in memory (see int8_avx512.cpp); "+v" holds each in one register.
// The bf16 pairs travel as __m512i: a reinterpret_cast to __m512bh& put them in memory too.
inline void dpbf16(__m512& acc, __m512i a, __m512i b) { asm("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b)); }

// MR rows of A x NP panels: MR*NP accumulators (up to 6 x 4 = 24 of the 32 registers), per pair NP
// panel loads and MR broadcasts of an A pair. Every loop unrolled, the accumulators in registers:
// GCC 12 kept them in memory when the block started from a masked load of c, or stored through
// an array of masks, so a block that accumulates is its own instantiation (Acc) and the masks are
// made where they are used.
template <int MR, int NP, bool Acc>
void block(i64 pairs, const bf16_t* a, i64 lda, const bf16_t* w, i64 panel_stride, i64 cols, float* c, i64 ldc) {
    __m512 acc[MR][NP];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p)
            acc[r][p] = Acc ? _mm512_maskz_loadu_ps(__mmask16(panel_lanes(cols - p * kPanel)), c + r * ldc + p * kPanel)
                            : _mm512_setzero_ps();
    for (i64 q = 0; q < pairs; ++q) {
        __m512i b[NP];
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p) b[p] = _mm512_loadu_si512(w + p * panel_stride + q * 2 * kPanel);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            std::int32_t pair;
            std::memcpy(&pair, a + r * lda + 2 * q, 4);
            const __m512i ab = _mm512_set1_epi32(pair);
#pragma GCC unroll 8
            for (int p = 0; p < NP; ++p) dpbf16(acc[r][p], ab, b[p]);
        }
    }
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) {
        const __mmask16 m = __mmask16(panel_lanes(cols - p * kPanel));  // the outputs below `cols`
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) _mm512_mask_storeu_ps(c + r * ldc + p * kPanel, m, acc[r][p]);
    }
}

void gemm_native(i64 N, i64 depth, const bf16_t* a, i64 lda, const bf16_t* packed, i64 panels, i64 cols, float* c,
                 i64 ldc, bool accumulate) {
    const i64 pairs = depth / 2, stride = depth * kPanel;
    panels = std::min(panels, (cols + kPanel - 1) / kPanel);
    for_blocks<6>(N, [&](auto rows, i64 n) {
        constexpr int R = decltype(rows)::value;
        const auto panel_block = [&](auto np, i64 p) {
            constexpr int P = decltype(np)::value;
            const bf16_t *ar = a + n * lda, *wp = packed + p * stride;
            float* cp = c + n * ldc + p * kPanel;
            if (accumulate)
                block<R, P, true>(pairs, ar, lda, wp, stride, cols - p * kPanel, cp, ldc);
            else
                block<R, P, false>(pairs, ar, lda, wp, stride, cols - p * kPanel, cp, ldc);
        };
        // Each output's pairs add in order, one vdpbf16ps after the other: with one or two rows a
        // block is a few chains bound by the instruction's latency, so it takes 8 panels (8-16
        // chains) instead of 4.
        if constexpr (R <= 2)
            for_blocks<8>(panels, panel_block);
        else
            for_blocks<4>(panels, panel_block);
    });
}

}  // namespace

const Kernels& avx512_bf16_kernels() {
    static const Kernels k{"avx512_bf16", round_native, gemm_native};
    return k;
}

}  // namespace bf16
}  // namespace fastrnn

FASTRNN_TARGET_END
#endif  // x86-64
