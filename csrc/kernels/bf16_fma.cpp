// bf16 GEMMs on float32 FMAs, the same bits as vdpbf16ps (csrc/kernels/bf16.h): a bf16 value
// widens to float32 exactly (its bits shifted up), and fma(a, w, acc) rounds a*w + acc once with
// the product exact, as each half of a vdpbf16ps pair does; the MXCSR's flush-to-zero and
// denormals-are-zero (set for the call, restored after) give its FTZ and DAZ. Intel cores run
// two float32 FMAs per cycle but vdpbf16ps at about 0.6 of that rate, so this path is the faster
// one there from three rows of A on (fewer go to vdpbf16ps where the CPU has it); it also serves
// AVX2 CPUs. Checked bitwise against vdpbf16ps on 64 million random
// pairs around every range edge, and in tests/test_bf16.py.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <vector>

#include "target.h"
#include "../dispatch/dispatch.h"
#include "bf16.h"
#include "blocks.h"

namespace fastrnn {
namespace bf16 {

namespace {

using i64 = std::int64_t;

// FTZ and DAZ for the lifetime of the object (the MXCSR is per thread).
struct FlushDenormals {
    unsigned saved = _mm_getcsr();
    FlushDenormals() { _mm_setcsr(saved | 0x8040u); }
    ~FlushDenormals() { _mm_setcsr(saved); }
};

// Rows n..n+rows of A widened to float32, [rows][depth], in the calling thread's kept buffer.
const float* widen_rows(const bf16_t* a, i64 lda, i64 rows, i64 depth) {
    thread_local std::vector<float> buf;
    if (buf.size() < std::size_t(rows * depth)) buf.resize(std::size_t(rows * depth));
    for (i64 r = 0; r < rows; ++r)
        for (i64 k = 0; k < depth; ++k) buf[std::size_t(r * depth + k)] = to_float(a[r * lda + k]);
    return buf.data();
}

}  // namespace
}  // namespace bf16
}  // namespace fastrnn

// ---- AVX-512F ------------------------------------------------------------------------------
FASTRNN_TARGET_BEGIN("avx512f,avx2,fma")
namespace fastrnn {
namespace bf16 {
namespace {

// MR rows x NP panels: per pair, each panel's 16 (odd, even) weights widened to two vectors,
// each row's two elements broadcast; 2*MR*NP FMAs (6 x 3: 36 FMAs for 6 shifts/masks).
template <int MR, int NP>
void block512(i64 pairs, const float* a, i64 depth, const bf16_t* w, i64 panel_stride, i64 cols, float* c, i64 ldc,
              bool accumulate) {
    const __m512i high = _mm512_set1_epi32(int(0xffff0000u));
    __mmask16 m[NP];  // the outputs below `cols`
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) m[p] = __mmask16(panel_lanes(cols - p * kPanel));
    __m512 acc[MR][NP];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p)
            acc[r][p] = accumulate ? _mm512_maskz_loadu_ps(m[p], c + r * ldc + p * kPanel) : _mm512_setzero_ps();
    for (i64 q = 0; q < pairs; ++q) {
        __m512 odd[NP], even[NP];
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p) {
            const __m512i v = _mm512_loadu_si512(w + p * panel_stride + q * 2 * kPanel);
            odd[p] = _mm512_castsi512_ps(_mm512_and_si512(v, high));
            even[p] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        }
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            const __m512 a1 = _mm512_set1_ps(a[r * depth + 2 * q + 1]), a0 = _mm512_set1_ps(a[r * depth + 2 * q]);
#pragma GCC unroll 8
            for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_fmadd_ps(a0, even[p], _mm512_fmadd_ps(a1, odd[p], acc[r][p]));
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p) _mm512_mask_storeu_ps(c + r * ldc + p * kPanel, m[p], acc[r][p]);
}

// Blocks of one or two rows go to vdpbf16ps where the CPU has it: there the FMAs wait on the
// weights' widening (a GEMM with N = 1 took 1.2-1.35x as long), from three rows on they win.
bool few_rows_on_dpbf16() {
    static const bool has = precision_features().avx512_bf16;
    return has;
}

void gemm_avx512_fma(i64 N, i64 depth, const bf16_t* a, i64 lda, const bf16_t* packed, i64 panels, i64 cols,
                     float* c, i64 ldc, bool accumulate) {
    const FlushDenormals ftz;
    const i64 pairs = depth / 2, stride = depth * kPanel;
    panels = std::min(panels, (cols + kPanel - 1) / kPanel);
    for_blocks<6>(N, [&](auto rows, i64 n) {
        if (decltype(rows)::value <= 2 && few_rows_on_dpbf16())
            return avx512_bf16_kernels().gemm(decltype(rows)::value, depth, a + n * lda, lda, packed, panels, cols,
                                              c + n * ldc, ldc, accumulate);
        const float* aw = widen_rows(a + n * lda, lda, decltype(rows)::value, depth);
        for_blocks<3>(panels, [&](auto np, i64 p) {
            block512<decltype(rows)::value, decltype(np)::value>(pairs, aw, depth, packed + p * stride, stride,
                                                                 cols - p * kPanel, c + n * ldc + p * kPanel, ldc,
                                                                 accumulate);
        });
    });
}

}  // namespace

const Kernels& avx512_fma_kernels() {
    static const Kernels k{"avx512_fma", few_rows_on_dpbf16() ? avx512_bf16_kernels().round : portable_kernels().round,
                           gemm_avx512_fma};
    return k;
}

}  // namespace bf16
}  // namespace fastrnn
FASTRNN_TARGET_END

// ---- AVX2 ----------------------------------------------------------------------------------
FASTRNN_TARGET_BEGIN("avx2,fma")
namespace fastrnn {
namespace bf16 {
namespace {

// MR rows x one panel as two halves of 8 outputs (a 256-bit load holds 8 outputs' pairs):
// 2*MR accumulators, 4 widened weight vectors, 2 broadcasts (MR = 4: 14 of 16 registers).
template <int MR>
void block256(i64 pairs, const float* a, i64 depth, const bf16_t* w, i64 cols, float* c, i64 ldc, bool accumulate) {
    const __m256i high = _mm256_set1_epi32(int(0xffff0000u));
    __m256i m[2];  // the outputs below `cols`, per half
#pragma GCC unroll 8
    for (int h = 0; h < 2; ++h)
        m[h] = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(std::min<i64>(std::max<i64>(cols - 8 * h, 0), 8))),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 acc[MR][2];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
        for (int h = 0; h < 2; ++h)
            acc[r][h] = accumulate ? _mm256_maskload_ps(c + r * ldc + 8 * h, m[h]) : _mm256_setzero_ps();
    for (i64 q = 0; q < pairs; ++q) {
        __m256 odd[2], even[2];
#pragma GCC unroll 8
        for (int h = 0; h < 2; ++h) {
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + q * 2 * kPanel + 16 * h));
            odd[h] = _mm256_castsi256_ps(_mm256_and_si256(v, high));
            even[h] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        }
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            const __m256 a1 = _mm256_set1_ps(a[r * depth + 2 * q + 1]), a0 = _mm256_set1_ps(a[r * depth + 2 * q]);
#pragma GCC unroll 8
            for (int h = 0; h < 2; ++h) acc[r][h] = _mm256_fmadd_ps(a0, even[h], _mm256_fmadd_ps(a1, odd[h], acc[r][h]));
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
        for (int h = 0; h < 2; ++h) _mm256_maskstore_ps(c + r * ldc + 8 * h, m[h], acc[r][h]);
}

void gemm_avx2_fma(i64 N, i64 depth, const bf16_t* a, i64 lda, const bf16_t* packed, i64 panels, i64 cols, float* c,
                   i64 ldc, bool accumulate) {
    const FlushDenormals ftz;
    const i64 pairs = depth / 2, stride = depth * kPanel;
    panels = std::min(panels, (cols + kPanel - 1) / kPanel);
    for_blocks<4>(N, [&](auto rows, i64 n) {
        const float* aw = widen_rows(a + n * lda, lda, decltype(rows)::value, depth);
        for (i64 p = 0; p < panels; ++p)
            block256<decltype(rows)::value>(pairs, aw, depth, packed + p * stride, cols - p * kPanel,
                                            c + n * ldc + p * kPanel, ldc, accumulate);
    });
}

}  // namespace

const Kernels& avx2_fma_kernels() {
    static const Kernels k{"avx2_fma", portable_kernels().round, gemm_avx2_fma};
    return k;
}

}  // namespace bf16
}  // namespace fastrnn
FASTRNN_TARGET_END
#endif  // x86-64
