// bfloat16 building blocks of the reduced-precision plans: rounding float32 to bf16, and the
// packed GEMM that multiplies bf16 operands with float32 accumulation.
//
// Every path gives the same bits: AVX512-BF16 (vcvtneps2bf16, vdpbf16ps), float32 FMAs on widened
// bf16 (AVX-512F or AVX2; csrc/kernels/bf16_fma.cpp) and `portable` (any CPU: an exact model of
// those two instructions, in plain C++). The model, checked against
// the hardware on an Intel Xeon (Emerald Rapids): every float32 bit pattern for the rounding,
// 128 million random dot-product pairs with denormals, overflows and signed zeros for the GEMM.
//   - Rounding: round to nearest even; denormal inputs become zero of their sign (DAZ); a NaN
//     stays a NaN (quiet, its sign and top payload bits kept).
//   - A dot-product pair: acc = FTZ(RN(acc + a[2i+1]*w[2i+1])), then the same with a[2i]*w[2i]:
//     the odd element first, each product exact (bf16 x bf16 fits float32's significand, with
//     an unbounded exponent), each sum rounded once to float32, results below float32's
//     smallest normal become zero (FTZ), and denormal inputs (acc, a, w) count as zero (DAZ).
// NaN payloads are not modeled (both paths give a NaN where one is due). The GEMM sums k in the
// same order on both paths, so their results are bitwise equal (tests/test_bf16.py).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

namespace fastrnn {
namespace bf16 {

using bf16_t = std::uint16_t;

constexpr int kPanel = 16;  // outputs per packed panel (one 512-bit vector of float32)

// Depth in whole pairs (an odd depth gets a zero pair element), and the packed size of W.
inline std::int64_t padded_depth(std::int64_t depth) { return (depth + 1) & ~std::int64_t(1); }
inline std::int64_t panel_count(std::int64_t rows) { return (rows + kPanel - 1) / kPanel; }
inline std::int64_t packed_elements(std::int64_t rows, std::int64_t depth) {
    return panel_count(rows) * kPanel * padded_depth(depth);
}

inline std::uint32_t bits(float x) {
    std::uint32_t b;
    std::memcpy(&b, &x, 4);
    return b;
}
inline float from_bits(std::uint32_t b) {
    float x;
    std::memcpy(&x, &b, 4);
    return x;
}

// float32 -> bf16 as vcvtneps2bf16 does it, as the float32 it stands for: round to nearest even,
// denormals to zero (DAZ), a NaN quiet. Without branches, so that loops over it vectorize.
inline float round_to_float(float x) {
    const std::uint32_t b = bits(x);
    const std::uint32_t v = (b & 0x7f800000u) == 0 ? b & 0x80000000u : b;
    const std::uint32_t r = (v + 0x7fffu + ((v >> 16) & 1u)) & 0xffff0000u;
    return from_bits((b & 0x7fffffffu) > 0x7f800000u ? (b | 0x00400000u) & 0xffff0000u : r);
}
inline bf16_t round_one(float x) { return bf16_t(bits(round_to_float(x)) >> 16); }
inline float to_float(bf16_t h) { return from_bits(std::uint32_t(h) << 16); }

// Lanes of a 16-output panel below `left` outputs (left >= 16: all): the panel's store mask.
inline std::uint32_t panel_lanes(std::int64_t left) {
    return left >= kPanel ? 0xffffu : (1u << std::max<std::int64_t>(left, 0)) - 1u;
}

// The kernels of one path.
struct Kernels {
    const char* name;  // "avx512_bf16", "avx512_fma", "avx2_fma" or "portable"
    // out[i] = round_one(x[i]), i < n.
    void (*round)(const float* x, std::int64_t n, bf16_t* out);
    // C[N, cols] (+)= A W^T with the first `cols` (<= 16*panels) outputs of the panels: A [N, depth]
    // bf16 rows (row stride lda >= depth, depth even; an odd depth's pad element must be finite,
    // zero by convention, as inf * 0 is NaN), W packed by pack(). Row n, output j sums
    // k = 0, 2, 4... in order, one pair at a time. Columns past `cols` are neither read nor written.
    void (*gemm)(std::int64_t N, std::int64_t depth, const bf16_t* a, std::int64_t lda, const bf16_t* packed,
                 std::int64_t panels, std::int64_t cols, float* c, std::int64_t ldc, bool accumulate);
};

const Kernels& portable_kernels();
// The AMX tile GEMM (bf16_amx.h) on a software model of the tiles: any CPU (the tests'; the
// order of a pair's two products is the SDM's, not vdpbf16ps's, see bf16_amx.h).
const Kernels& amx_model_kernels();
#if defined(__x86_64__) || defined(_M_X64)
// The AMX tile GEMM on the CPU's tiles: call only on a CPU with AMX-BF16, after the OS granted
// the tile state (dispatch.h, enable_amx).
const Kernels& amx_kernels();
const Kernels& avx512_bf16_kernels();  // call only on a CPU with AVX512-BF16
// float32 FMAs on widened bf16, the same bits (csrc/kernels/bf16_fma.cpp); call only on a CPU
// with AVX-512F, or AVX2 and FMA.
const Kernels& avx512_fma_kernels();
const Kernels& avx2_fma_kernels();
#endif

// W [rows, depth] float32 (row stride ldw) -> panels [panel][depth/2 pairs][16 outputs][2], each
// element rounded by round_one; rows past `rows` and the odd depth's last element are zero.
// `out` holds packed_elements(rows, depth).
void pack(const float* w, std::int64_t rows, std::int64_t depth, std::int64_t ldw, bf16_t* out);

}  // namespace bf16
}  // namespace fastrnn
