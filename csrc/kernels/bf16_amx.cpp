// The AMX-BF16 path (opt-in, see dispatch.h): the tile GEMM of bf16_amx.h on the CPU's tiles.
// Each call configures the tiles of the thread it runs on (ldtilecfg) and releases them, so it
// runs on any thread, torch's OpenMP threads included; the process asks Linux for the tile state
// first (dispatch.cpp). The rounding is the avx512_bf16 path's (every AMX CPU has AVX512-BF16).
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "bf16_amx.h"
#include "target.h"

FASTRNN_TARGET_BEGIN("amx-tile,amx-bf16")

namespace fastrnn {
namespace bf16 {

namespace {

using i64 = std::int64_t;

// GCC's tile intrinsics are macros that paste the tile number into the instruction's text: each
// tile the GEMM uses gets its own literal.
#define FASTRNN_EACH_TILE(op)                       \
    if constexpr (T == 0) op(0);                     \
    else if constexpr (T == 1) op(1);                \
    else if constexpr (T == 2) op(2);                \
    else if constexpr (T == 3) op(3);                \
    else if constexpr (T == 4) op(4);                \
    else if constexpr (T == 5) op(5);                \
    else if constexpr (T == 6) op(6);                \
    else op(7)

struct Tiles {
    void config(const amx::TileConfig& cfg) { _tile_loadconfig(&cfg); }
    template <int T>
    void zero() {
#define FASTRNN_OP(t) _tile_zero(t)
        FASTRNN_EACH_TILE(FASTRNN_OP);
#undef FASTRNN_OP
    }
    template <int T>
    void load(const void* p, i64 stride) {
#define FASTRNN_OP(t) _tile_loadd(t, p, stride)
        FASTRNN_EACH_TILE(FASTRNN_OP);
#undef FASTRNN_OP
    }
    template <int T>
    void store(void* p, i64 stride) {
#define FASTRNN_OP(t) _tile_stored(t, p, stride)
        FASTRNN_EACH_TILE(FASTRNN_OP);
#undef FASTRNN_OP
    }
    template <int C, int A, int B>
    void dot() {  // the four products of bf16_amx.h's GEMM
        static_assert((C == 0 && A == 2 && B == 3) || (C == 1 && A == 2 && B == 4) || (C == 0 && A == 5 && B == 6) ||
                      (C == 1 && A == 5 && B == 7), "a tile product the GEMM does not use");
        if constexpr (A == 2 && B == 3) _tile_dpbf16ps(0, 2, 3);
        else if constexpr (A == 2) _tile_dpbf16ps(1, 2, 4);
        else if constexpr (B == 6) _tile_dpbf16ps(0, 5, 6);
        else _tile_dpbf16ps(1, 5, 7);
    }
    void release() { _tile_release(); }
};
#undef FASTRNN_EACH_TILE

void gemm_amx(i64 N, i64 depth, const bf16_t* a, i64 lda, const bf16_t* packed, i64 panels, i64 cols, float* c,
              i64 ldc, bool accumulate) {
    Tiles tiles;
    amx::gemm(tiles, N, depth, a, lda, packed, panels, cols, c, ldc, accumulate);
}

}  // namespace

const Kernels& amx_kernels() {
    static const Kernels k{"amx_bf16", avx512_bf16_kernels().round, gemm_amx};
    return k;
}

}  // namespace bf16
}  // namespace fastrnn

FASTRNN_TARGET_END
#endif  // x86-64
