// A plan's reduced-precision products: int8 dynamic quantization (int8.h) and bf16 compute
// (bf16.h). One weight matrix packed for its precision's kernels, and the two halves of a
// product with it: converting the input rows (int8: quantized per row; bf16: rounded), once per
// step and thread in a recurrence, then multiplying them by panels of the matrix (float32 out).
#pragma once
#include <cstdint>

#include "bf16.h"
#include "int8.h"

namespace fastrnn {

enum class Precision : int { Float = 0, Int8 = 1, BF16 = 2 };

static_assert(int8::kPanel == bf16::kPanel, "both precisions pack panels of 16 output rows");

// A recurrent matrix (W_hh, W_hr) is packed in the float32 kernels' unit blocks: `block_panels`
// panels per block of nr units (nr rounded up to 16), gate by gate (block (g, b) at
// (g * nblk + b) * block_panels), or with `block_major` block by block ((b * gates + g) *
// block_panels: one unit block's gates are consecutive panels, so a one-block tile of every gate
// is one product, which the 4-gate cells' steps use). The hoisted W_ih is in its own row order
// (block_panels 0).
struct ReducedMatrix {
    static constexpr int kPanel = int8::kPanel;
    Precision precision = Precision::Int8;
    const int8::Kernels* int8 = nullptr;  // the precision's kernels (the other one null)
    const bf16::Kernels* bf16 = nullptr;
    const void* codes = nullptr;          // panels: int8 codes, or bf16 values
    const float* scale = nullptr;         // int8: per output row
    const std::int32_t* wsum = nullptr;   // int8: code sums per output row
    std::int64_t depth = 0, block_panels = 0, gates = 1;
    bool block_major = false;

    std::int64_t padded_depth() const {
        return precision == Precision::Int8 ? int8::padded_depth(depth) : bf16::padded_depth(depth);
    }
    // Bytes of one converted input row, and an upper bound for rows of `depth` in any precision.
    std::int64_t row_bytes() const { return precision == Precision::Int8 ? padded_depth() : 2 * padded_depth(); }
    static std::int64_t max_row_bytes(std::int64_t depth) { return 2 * (int8::padded_depth(depth)); }
    // The first panel of gate g, unit block b (nblk blocks per gate).
    std::int64_t block(std::int64_t g, std::int64_t b, std::int64_t nblk) const {
        return (block_major ? b * gates + g : g * nblk + b) * block_panels;
    }
    // a [N, depth] (row stride lda) -> rows (row stride row_bytes()) and, int8, per-row scales.
    void convert(std::int64_t N, const float* a, std::int64_t lda, void* rows, float* scales) const {
        const std::int64_t dp = padded_depth();
        if (precision == Precision::Int8) {
            int8->quantize_rows(N, depth, a, lda, static_cast<std::uint8_t*>(rows), dp, scales);
            return;
        }
        auto* out = static_cast<bf16::bf16_t*>(rows);
        for (std::int64_t n = 0; n < N; ++n) {
            bf16->round(a + n * lda, depth, out + n * dp);
            if (dp > depth) out[n * dp + depth] = 0;  // the odd depth's pad: zero, finite
        }
    }
    // c[N, cols] (+)= the converted rows times panels p0 .. p0+panels (cols <= 16*panels).
    void product(std::int64_t N, const void* rows, const float* scales, std::int64_t p0, std::int64_t panels,
                 std::int64_t cols, float* c, std::int64_t ldc, bool accumulate) const {
        const std::int64_t dp = padded_depth(), at = p0 * dp * kPanel;
        if (precision == Precision::Int8)
            int8->gemm(N, dp, static_cast<const std::uint8_t*>(rows), dp, scales,
                       static_cast<const std::int8_t*>(codes) + at, scale + p0 * kPanel, wsum + p0 * kPanel, panels,
                       cols, c, ldc, accumulate);
        else
            bf16->gemm(N, dp, static_cast<const bf16::bf16_t*>(rows), dp, static_cast<const bf16::bf16_t*>(codes) + at,
                       panels, cols, c, ldc, accumulate);
    }
};

}  // namespace fastrnn
