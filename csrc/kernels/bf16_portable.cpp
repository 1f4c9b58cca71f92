// The portable bf16 path: an exact model of vcvtneps2bf16 and vdpbf16ps (csrc/kernels/bf16.h),
// compiled for the baseline ISA. It serves CPUs without AVX512-BF16 and is the tests' reference
// for the native path.
#include <cmath>

#include "bf16.h"
#include "bf16_amx.h"

namespace fastrnn {
namespace bf16 {

namespace {

using i64 = std::int64_t;

inline float daz(float x) { return (bits(x) & 0x7f800000u) == 0 ? from_bits(bits(x) & 0x80000000u) : x; }

// s (an exact float32 sum, or one rounded to double first: harmless, as double has more than
// 2*24+2 bits) rounded once to float32 with an unbounded exponent, then flushed to zero below
// float32's smallest normal. Just below it, the 24-bit rounding may still reach it.
inline float round_ftz(double s) {
    const double mag = std::fabs(s);
    if (!(mag < 0x1p-126)) return float(s);  // normal, overflow to inf, NaN
    const float z = std::signbit(s) ? -0.0f : 0.0f;
    return mag >= 0x1p-126 - 0x1p-151 ? std::copysign(0x1p-126f, z) : z;
}

inline double product(bf16_t a, bf16_t w) { return double(daz(to_float(a))) * double(daz(to_float(w))); }

// One vdpbf16ps lane: the odd element of the pair first.
inline float dot_pair(float acc, const bf16_t* a, const bf16_t* w) {
    acc = round_ftz(double(daz(acc)) + product(a[1], w[1]));
    return round_ftz(double(acc) + product(a[0], w[0]));
}

void round_portable(const float* x, i64 n, bf16_t* out) {
    for (i64 i = 0; i < n; ++i) out[i] = round_one(x[i]);
}

void gemm_portable(i64 N, i64 depth, const bf16_t* a, i64 lda, const bf16_t* packed, i64 panels, i64 cols,
                   float* c, i64 ldc, bool accumulate) {
    const i64 pairs = depth / 2;
    for (i64 n = 0; n < N; ++n)
        for (i64 p = 0; p < panels; ++p)
            for (int j = 0; j < kPanel && p * kPanel + j < cols; ++j) {
                float* out = c + n * ldc + p * kPanel + j;
                float acc = accumulate ? *out : 0.0f;
                const bf16_t* w = packed + p * depth * kPanel + 2 * j;
                for (i64 q = 0; q < pairs; ++q) acc = dot_pair(acc, a + n * lda + 2 * q, w + q * 2 * kPanel);
                *out = acc;
            }
}

// A software model of the AMX tiles that bf16_amx.h's GEMM runs on: 8 tiles of 16 rows x 64
// bytes, the configured rows and bytes per row, TDPBF16PS as the SDM's pseudo-code has it (per
// pair the even element first; bf16_amx.h).
struct ModelTiles {
    amx::TileConfig cfg;
    alignas(64) unsigned char t[8][16][64];

    void config(const amx::TileConfig& c) {
        cfg = c;
        std::memset(t, 0, sizeof t);
    }
    template <int T>
    void zero() { std::memset(t[T], 0, sizeof t[T]); }
    template <int T>
    void load(const void* p, i64 stride) {
        for (int r = 0; r < cfg.rows[T]; ++r)
            std::memcpy(t[T][r], static_cast<const unsigned char*>(p) + r * stride, cfg.colsb[T]);
    }
    template <int T>
    void store(void* p, i64 stride) {
        for (int r = 0; r < cfg.rows[T]; ++r)
            std::memcpy(static_cast<unsigned char*>(p) + r * stride, t[T][r], cfg.colsb[T]);
    }
    template <int C, int A, int B>
    void dot() {
        for (int m = 0; m < cfg.rows[C]; ++m)
            for (int k = 0; k < cfg.colsb[A] / 4; ++k) {
                bf16_t a[2];
                std::memcpy(a, &t[A][m][4 * k], 4);
                for (int n = 0; n < cfg.colsb[C] / 4; ++n) {
                    bf16_t b[2];
                    float acc;
                    std::memcpy(b, &t[B][k][4 * n], 4);
                    std::memcpy(&acc, &t[C][m][4 * n], 4);
                    acc = round_ftz(double(daz(acc)) + product(a[0], b[0]));
                    acc = round_ftz(double(acc) + product(a[1], b[1]));
                    std::memcpy(&t[C][m][4 * n], &acc, 4);
                }
            }
    }
    void release() {}
};

void gemm_amx_model(i64 N, i64 depth, const bf16_t* a, i64 lda, const bf16_t* packed, i64 panels, i64 cols,
                    float* c, i64 ldc, bool accumulate) {
    ModelTiles tiles;
    amx::gemm(tiles, N, depth, a, lda, packed, panels, cols, c, ldc, accumulate);
}

}  // namespace

const Kernels& portable_kernels() {
    static const Kernels k{"portable", round_portable, gemm_portable};
    return k;
}

const Kernels& amx_model_kernels() {
    static const Kernels k{"amx_model", round_portable, gemm_amx_model};
    return k;
}

void pack(const float* w, i64 rows, i64 depth, i64 ldw, bf16_t* out) {
    const i64 pairs = padded_depth(depth) / 2, panels = panel_count(rows);
    for (i64 p = 0; p < panels; ++p)
        for (i64 q = 0; q < pairs; ++q)
            for (int j = 0; j < kPanel; ++j)
                for (int e = 0; e < 2; ++e) {
                    const i64 r = p * kPanel + j, k = 2 * q + e;
                    *out++ = r < rows && k < depth ? round_one(w[r * ldw + k]) : bf16_t(0);
                }
}

}  // namespace bf16
}  // namespace fastrnn
