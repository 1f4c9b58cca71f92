// The AMX-BF16 GEMM of the bf16 plans (bf16::Kernels::gemm, csrc/kernels/bf16.h), written once
// against a "tile unit": the CPU's tiles (bf16_amx.cpp, `tdpbf16ps`) or a software model of them
// (bf16_portable.cpp), so the blocking, the tails and the partial panels run in the tests on any
// CPU.
//
// The packed panels need no repacking: a panel's 16 outputs x 2 bf16 per pair are 64 bytes, so
// 16 pairs of one panel are one B tile (16 rows of 64 bytes), and 16 rows of A times 16 pairs
// are one A tile. Tiles: 0, 1 the C tiles of two panels (16 x 16 float32), 2 A, 3 and 4 the
// panels' B, and 5, 6, 7 the same A and B for the depth's last pairs (fewer than 16).
//
// The model follows the pseudo-code of the Intel SDM for TDPBF16PS: per output, per pair, the
// even element's product first, then the odd one's, each added with one rounding to nearest
// even, denormal inputs as zero and results below float32's smallest normal flushed to zero.
// vdpbf16ps on the same machines adds the odd element first (bf16.h), so the two paths agree to
// float32 roundings of the sums, not bitwise. The hardware's order has not been checked: no
// CPU that fastrnn was measured on exposed AMX. That is why this path is opt-in.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "bf16.h"

namespace fastrnn {
namespace bf16 {
namespace amx {

// ldtilecfg's 64-byte operand, palette 1.
struct TileConfig {
    std::uint8_t palette = 1, start_row = 0;
    std::uint8_t reserved[14] = {};
    std::uint16_t colsb[16] = {};  // bytes per row of each tile
    std::uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

constexpr int kPairs = 16;  // pairs per full A row chunk (64 bytes of bf16) and B tile rows

// C[N, cols] (+)= A W^T, the contract of bf16::Kernels::gemm, on `Unit` u, which provides
// config(cfg), zero<T>(), load<T>(ptr, stride_bytes), store<T>(ptr, stride_bytes) and
// dot<C, A, B>() (tdpbf16ps C += A B), tile numbers as template arguments.
template <class Unit>
void gemm(Unit& u, std::int64_t N, std::int64_t depth, const bf16_t* a, std::int64_t lda, const bf16_t* packed,
          std::int64_t panels, std::int64_t cols, float* c, std::int64_t ldc, bool accumulate) {
    using i64 = std::int64_t;
    const i64 pairs = depth / 2, full = pairs / kPairs, tail = pairs % kPairs;
    const i64 panel_elems = depth * kPanel;  // a panel: `pairs` rows of 16 outputs x 2
    panels = panels < (cols + kPanel - 1) / kPanel ? panels : (cols + kPanel - 1) / kPanel;
    alignas(64) float edge[2][16 * kPanel];  // C tiles of partial panels (columns past `cols` untouched)
    int configured_rows = -1;
    for (i64 r0 = 0; r0 < N; r0 += 16) {
        const int mr = int(N - r0 < 16 ? N - r0 : 16);
        if (mr != configured_rows) {
            TileConfig cfg;
            for (int t = 0; t <= 2; ++t) cfg.rows[t] = std::uint8_t(mr), cfg.colsb[t] = 64;
            cfg.rows[3] = cfg.rows[4] = kPairs, cfg.colsb[3] = cfg.colsb[4] = 64;
            if (tail) {
                cfg.rows[5] = std::uint8_t(mr), cfg.colsb[5] = std::uint16_t(4 * tail);
                cfg.rows[6] = cfg.rows[7] = std::uint8_t(tail), cfg.colsb[6] = cfg.colsb[7] = 64;
            }
            u.config(cfg);
            configured_rows = mr;
        }
        const bf16_t* ar = a + r0 * lda;
        float* cr = c + r0 * ldc;
        for (i64 p = 0; p < panels; p += 2) {
            const int np = panels - p >= 2 ? 2 : 1;
            // Where each C tile lives: in C when its 16 columns are all wanted, else in `edge`.
            float* dst[2];
            i64 ld[2];
            for (int q = 0; q < np; ++q) {
                const i64 c0 = (p + q) * kPanel, n = cols - c0 < kPanel ? cols - c0 : kPanel;
                if (n == kPanel) {
                    dst[q] = cr + c0, ld[q] = ldc;
                } else {
                    dst[q] = edge[q], ld[q] = kPanel;
                    for (int i = 0; i < mr; ++i) {
                        std::memset(edge[q] + i * kPanel, 0, sizeof(float) * kPanel);
                        if (accumulate && n > 0) std::memcpy(edge[q] + i * kPanel, cr + i * ldc + c0, sizeof(float) * n);
                    }
                }
            }
            const bool load = accumulate || dst[0] == edge[0];
            if (load) u.template load<0>(dst[0], ld[0] * 4); else u.template zero<0>();
            if (np == 2) {
                if (accumulate || dst[1] == edge[1]) u.template load<1>(dst[1], ld[1] * 4); else u.template zero<1>();
            }
            const bf16_t* b0 = packed + p * panel_elems;
            // Chunk k of 16 pairs (the tail: fewer) into both C tiles, on tiles A, B0, B1.
            const auto chunk = [&](auto A, auto B0, auto B1, i64 k) {
                constexpr int a_tile = decltype(A)::value, b0_tile = decltype(B0)::value, b1_tile = decltype(B1)::value;
                u.template load<a_tile>(ar + k * 2 * kPairs, lda * 2);
                u.template load<b0_tile>(b0 + k * kPairs * 2 * kPanel, 64);
                u.template dot<0, a_tile, b0_tile>();
                if (np == 2) {
                    u.template load<b1_tile>(b0 + panel_elems + k * kPairs * 2 * kPanel, 64);
                    u.template dot<1, a_tile, b1_tile>();
                }
            };
            using std::integral_constant;
            for (i64 k = 0; k < full; ++k)
                chunk(integral_constant<int, 2>{}, integral_constant<int, 3>{}, integral_constant<int, 4>{}, k);
            if (tail) chunk(integral_constant<int, 5>{}, integral_constant<int, 6>{}, integral_constant<int, 7>{}, full);
            u.template store<0>(dst[0], ld[0] * 4);
            if (np == 2) u.template store<1>(dst[1], ld[1] * 4);
            for (int q = 0; q < np; ++q) {
                if (dst[q] != edge[q]) continue;
                const i64 c0 = (p + q) * kPanel, n = cols - c0 < kPanel ? cols - c0 : kPanel;
                for (int i = 0; i < mr && n > 0; ++i) std::memcpy(cr + i * ldc + c0, edge[q] + i * kPanel, sizeof(float) * n);
            }
        }
    }
    u.release();
}

}  // namespace amx
}  // namespace bf16
}  // namespace fastrnn
