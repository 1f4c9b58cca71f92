// The recurrent product's microkernel: C[rows, panels*nr] (+)= A[rows, K] * B, with B packed in
// K x nr panels (nr = 2 vectors) that are streamed in order, A read in place with broadcasts.
// Register blocking: rows x panels per call chosen so that 8-24 vector accumulators are live
// (enough independent FMA chains to hide the latency). On AVX-512 the rows per block are a
// per-microarchitecture choice (csrc/dispatch/).
// Included by each ISA's file inside its namespace and target pragma, written once against V.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

// Panel width in elements: two vectors (or 8 scalars for the portable path).
template <class V>
constexpr int panel_width() {
    return V::width > 1 ? 2 * V::width : 8;
}

// Depth of one pass over K of the recurrent products: keeps a tile's panels (<= 8 x kKC x nr) in
// L2 while every row of A streams through them.
constexpr std::int64_t kKC = 256;


// Forward packing: panel (g, b) = rows g*H + b*nr .. +nr of W [G*H, K] (W_hh: K = H, or the
// projection size), stored [K][nr] (k-major), zero past H.
template <class V, class T>
void pack_forward(const T* w, std::int64_t G, std::int64_t H, std::int64_t K, T* out) {
    constexpr int NR = panel_width<V>();
    const std::int64_t nblk = (H + NR - 1) / NR;
    for (std::int64_t g = 0; g < G; ++g)
        for (std::int64_t b = 0; b < nblk; ++b) {
            T* p = out + (g * nblk + b) * K * NR;
            for (int j = 0; j < NR; ++j) {  // read rows of W_hh contiguously
                const std::int64_t u = b * NR + j;
                const T* row = w + (g * H + u) * K;
                if (u < H)
                    for (std::int64_t k = 0; k < K; ++k) p[k * NR + j] = row[k];
                else
                    for (std::int64_t k = 0; k < K; ++k) p[k * NR + j] = T(0);
            }
        }
}

// Backward packing: panel b = columns b*nr .. +nr of W [R, K] (W_hh: R = G*H), stored [R][nr].
template <class V, class T>
void pack_backward(const T* w, std::int64_t R, std::int64_t K, T* out) {
    constexpr int NR = panel_width<V>();
    const std::int64_t nblk = (K + NR - 1) / NR;
    for (std::int64_t b = 0; b < nblk; ++b) {
        T* p = out + b * R * NR;
        for (std::int64_t k = 0; k < R; ++k)
            for (int j = 0; j < NR; ++j) {
                const std::int64_t u = b * NR + j;
                p[k * NR + j] = u < K ? w[k * K + u] : T(0);
            }
    }
}

// R rows x P panels, depth kc. b[p] points at panel p's row k0; c + r*ldc + p*nr is the output.
template <class V, int R, int P>
inline void microkernel(std::int64_t kc, const typename V::value_type* a, std::int64_t lda,
                        const typename V::value_type* const* b, typename V::value_type* c, std::int64_t ldc,
                        bool accumulate) {
    using T = typename V::value_type;
    constexpr int NR = panel_width<V>(), NV = NR / V::width;
    V acc[R][P][NV];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) acc[r][p][v] = V::zero();
    for (std::int64_t k = 0; k < kc; ++k) {
#pragma GCC unroll 8
        for (int p = 0; p < P; ++p) {
            V bv[NV];
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) bv[v] = V::load(b[p] + k * NR + v * V::width);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                const V av = V::set1(a[r * lda + k]);
#pragma GCC unroll 8
                for (int v = 0; v < NV; ++v) acc[r][p][v] = fmadd(av, bv[v], acc[r][p][v]);
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
                T* dst = c + r * ldc + p * NR + v * V::width;
                (accumulate ? acc[r][p][v] + V::load(dst) : acc[r][p][v]).store(dst);
            }
}

// Vector registers the microkernel may fill with accumulators (the rest hold B and A).
template <class V>
constexpr int accumulator_budget() {
    return V::regs >= 32 ? 24 : 12;
}
// Rows per register block: more rows reuse each loaded B vector more often. With 32 registers
// the dispatch file chooses 8 or 6 per microarchitecture at run time (microkernel_rows()).
template <class V>
constexpr int max_rows() {
    return V::regs >= 32 ? 8 : 6;
}
// Panels per register block of R rows: as many as the accumulator budget allows, at most 6.
template <class V, int R>
constexpr int block_panels() {
    constexpr int PM0 = accumulator_budget<V>() / (R * (panel_width<V>() / V::width));
    return PM0 < 1 ? 1 : (PM0 > 6 ? 6 : PM0);
}

// Rows r0..r0+R of the tile against np panels, P at a time (as many as the registers allow).
template <class V, int R>
inline void row_block(std::int64_t kc, const typename V::value_type* a, std::int64_t lda,
                      const typename V::value_type* const* b, int np, typename V::value_type* c, std::int64_t ldc,
                      bool accumulate) {
    constexpr int NR = panel_width<V>(), PM = block_panels<V, R>();
    int p = 0;
    for (; p + PM <= np; p += PM) microkernel<V, R, PM>(kc, a, lda, b + p, c + p * NR, ldc, accumulate);
    int left = np - p;  // fewer than PM
    if constexpr (PM >= 3) {
        if (left >= 3) {
            microkernel<V, R, 3>(kc, a, lda, b + p, c + p * NR, ldc, accumulate);
            p += 3, left -= 3;
        }
    }
    if constexpr (PM >= 2) {
        if (left == 2) {
            microkernel<V, R, 2>(kc, a, lda, b + p, c + p * NR, ldc, accumulate);
            p += 2, left -= 2;
        }
    }
    if (left == 1) microkernel<V, R, 1>(kc, a, lda, b + p, c + p * NR, ldc, accumulate);
}

// The last rows < max_rows: row_block<R> for R = rem.
template <class V, int R>
inline void row_tail(int rem, std::int64_t kc, const typename V::value_type* a, std::int64_t lda,
                     const typename V::value_type* const* b, int np, typename V::value_type* c, std::int64_t ldc,
                     bool accumulate) {
    if constexpr (R > 0) {
        if (rem == R)
            row_block<V, R>(kc, a, lda, b, np, c, ldc, accumulate);
        else
            row_tail<V, R - 1>(rem, kc, a, lda, b, np, c, ldc, accumulate);
    }
}

// tile[N, np*nr] (+)= A[N, K] * [panels], K in passes of `depth`. `panels[p]` points at row 0 of
// panel p (stride nr per k). The tile's row stride is ldc. MR rows of A per register block.
// Rows outer: each register block of rows streams all np panels (from L2). Panels outer: each
// group of one block's panels (at depth 128, <= 32 KB) stays in L1 while every row block of A
// passes over it, as in GotoBLAS; for that the pass is shorter. The loop order never changes a
// bit of the result, the depth does (another order of additions).
template <class V, int MR>
void tile_gemm_rows(std::int64_t N, std::int64_t K, const typename V::value_type* a, std::int64_t lda,
                    const typename V::value_type* const* panels, int np, typename V::value_type* tile,
                    std::int64_t ldc, bool accumulate, std::int64_t depth, bool panels_outer) {
    using T = typename V::value_type;
    constexpr int NR = panel_width<V>();
    const int group = panels_outer ? block_panels<V, MR>() : np;
    const T* b[kMaxTilePanels];
    for (std::int64_t k0 = 0; k0 < K; k0 += depth) {
        const std::int64_t kc = std::min(depth, K - k0);
        const bool acc = accumulate || k0 > 0;
        for (int p = 0; p < np; ++p) b[p] = panels[p] + k0 * NR;
        const T* ak = a + k0;
        const std::int64_t full = N / MR * MR;
        for (int p = 0; p < np; p += group)
            for (std::int64_t r = 0; r < full; r += MR)
                row_block<V, MR>(kc, ak + r * lda, lda, b + p, std::min(group, np - p), tile + r * ldc + p * NR, ldc,
                                 acc);
        // the last rows take every panel in one pass: their blocks hold as many panels as their
        // accumulators allow (one row against one panel would be 2 FMA chains)
        row_tail<V, MR - 1>(int(N - full), kc, ak + full * lda, lda, b, np, tile + full * ldc, ldc, acc);
    }
}

// Every k-sum runs in the same order whatever MR and the loop order are: they change speed,
// never a bit of the result (tests/test_blocking.py); the depth does. The tile's row stride is
// ldc, np*nr when 0. The recurrent products: depth kKC, rows outer.
template <class V>
void tile_gemm(std::int64_t N, std::int64_t K, const typename V::value_type* a, std::int64_t lda,
               const typename V::value_type* const* panels, int np, typename V::value_type* tile,
               bool accumulate, std::int64_t ldc = 0, std::int64_t depth = kKC, bool panels_outer = false) {
    if (ldc == 0) ldc = std::int64_t(np) * panel_width<V>();
    if constexpr (max_rows<V>() == 8) {  // up to 8 rows, one 8-row block loads each B vector once
        // 6-row blocks, unless 8-row blocks divide N and 6-row ones do not: a last block of 2-4
        // rows cost more than the 6-row blocks gain (N = 16, 32, 40: 8 rows 1.1-1.25x faster
        // on a Xeon; a multiple of 6 such as 24 or 48 ran 1.07-1.2x faster with 6)
        if (N > 8 && microkernel_rows() == 6 && (N % 8 != 0 || N % 6 == 0))
            return tile_gemm_rows<V, 6>(N, K, a, lda, panels, np, tile, ldc, accumulate, depth, panels_outer);
        return tile_gemm_rows<V, 8>(N, K, a, lda, panels, np, tile, ldc, accumulate, depth, panels_outer);
    }
    tile_gemm_rows<V, max_rows<V>()>(N, K, a, lda, panels, np, tile, ldc, accumulate, depth, panels_outer);
}

// C[M, n] = A[M, K] W^T with W [n, K] packed forward as one gate of n units (pack_forward(w, 1,
// n, K)): the hoisted input product on the recurrent product's kernels, where the dispatch file
// prefers them to BLAS (own_input_gemm()). Rows in blocks of kInputRows, panels kInputPanels
// at a time, written in place; a last panel that runs past n goes through `spill`
// [kInputRows, kInputPanels * nr]. Each row's result is the same whatever the rows around it.
// Passes of 128 over K, panels outer: 142 against 134 GFLOP/s (rows outer, passes of 256) at
// 6400 x 256 x 1024, 122 against 109 at 8000 x 64 x 256 on a Xeon; in the recurrent products,
// where a tile's pointwise work follows its GEMM, the same order measured no gain end to end.
constexpr std::int64_t kInputDepth = 128;

template <class V>
void input_gemm(std::int64_t M, std::int64_t K, const typename V::value_type* a, std::int64_t lda,
                const typename V::value_type* packed, std::int64_t n, typename V::value_type* c, std::int64_t ldc,
                typename V::value_type* spill) {
    using T = typename V::value_type;
    constexpr int NR = panel_width<V>();
    const std::int64_t nblk = (n + NR - 1) / NR;
    const T* panels[kInputPanels];
    for (std::int64_t m0 = 0; m0 < M; m0 += kInputRows) {
        const std::int64_t mc = std::min(kInputRows, M - m0);
        for (std::int64_t b = 0; b < nblk; b += kInputPanels) {
            const int np = int(std::min<std::int64_t>(kInputPanels, nblk - b));
            for (int p = 0; p < np; ++p) panels[p] = packed + (b + p) * K * NR;
            const std::int64_t col = b * NR, width = std::min<std::int64_t>(np * NR, n - col);
            if (width == np * NR) {
                tile_gemm<V>(mc, K, a + m0 * lda, lda, panels, np, c + m0 * ldc + col, false, ldc, kInputDepth, true);
                continue;
            }
            tile_gemm<V>(mc, K, a + m0 * lda, lda, panels, np, spill, false, 0, kInputDepth, true);
            for (std::int64_t r = 0; r < mc; ++r)
                std::memcpy(c + (m0 + r) * ldc + col, spill + r * np * NR, sizeof(T) * std::size_t(width));
        }
    }
}

// The same product with W read in place, row-major (rows of `depth` elements): C[r, n] of
// c + n*ldc + r = dot(W row r, A row n), for `rows` rows and N rows of A. For the few rows of A
// of a streaming step: nothing to pack, so the weights are always the caller's current ones,
// and W is read once (R rows x S rows of A per register block, each W vector used S times).
//
// With `ahead`, each k step also requests its share of the R rows at `next` into L1. On AVX2 (16
// registers, 32-byte loads) the R interleaved row streams of a block outrun the hardware
// prefetchers: on a Zen 3, 384 KB of rows from L2 took 5.0 us without and 4.1 us with the requests,
// the same as a plain read of those bytes (82 -> 95 GB/s at N = 1). AVX-512 keeps the plain loop,
// measured faster there on a Xeon (see rows_gemm).
template <class V>
constexpr bool prefetch_next_rows() {
    return V::regs == 16 && V::width > 1;
}

// Whether the ISA's vector has hsum4 (csrc/simd/): four lane sums at once.
template <class V, class = void>
struct has_hsum4 : std::false_type {};
template <class V>
struct has_hsum4<V, std::void_t<decltype(hsum4(static_cast<const V*>(nullptr),
                                               static_cast<typename V::value_type*>(nullptr)))>> : std::true_type {};

// out[r] = the sum of v[r]'s lanes, r < R. With hsum4, four at a time (a quarter of the
// shuffles), and a block of fewer rows pads with zeros: every row's lanes are added in the same
// order whatever block it is in, so a row's result never depends on how the rows were split.
template <class V, int R>
inline void lane_sums(const V* v, typename V::value_type* out) {
    if constexpr (has_hsum4<V>::value) {
#pragma GCC unroll 4
        for (int r0 = 0; r0 < R; r0 += 4) {
            V four[4];
#pragma GCC unroll 4
            for (int i = 0; i < 4; ++i) four[i] = r0 + i < R ? v[r0 + i] : V::zero();
            typename V::value_type sums[4];
            hsum4(four, sums);
            for (int i = 0; i < 4 && r0 + i < R; ++i) out[r0 + i] = sums[i];
        }
    } else {
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) out[r] = hsum(v[r]);
    }
}

template <class V, int R, int S, bool ahead = false>
inline void dot_block(std::int64_t depth, const typename V::value_type* w, const typename V::value_type* a,
                      std::int64_t lda, typename V::value_type* c, std::int64_t ldc,
                      const typename V::value_type* next = nullptr) {
    using T = typename V::value_type;
    // Bytes of the next block per k step, in cache lines, rounded up (3 rows: 96 bytes, 2 lines;
    // small blocks ask for a line twice). The next block is taken to be this one's size: before a
    // shorter last block of a group this requests a row or two of the rows after it, which are read
    // soon after too, and the short block requests fewer of the rows at `next` than follow.
    constexpr int step_bytes = R * V::width * int(sizeof(T)), lines = (step_bytes + 63) / 64;
    V acc[S * R];  // slot s, row r at s * R + r
#pragma GCC unroll 16
    for (int i = 0; i < S * R; ++i) acc[i] = V::zero();
    std::int64_t k = 0;
    for (; k + V::width <= depth; k += V::width) {
        V av[S];
#pragma GCC unroll 4
        for (int s = 0; s < S; ++s) av[s] = V::load(a + s * lda + k);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            const V wv = V::load(w + r * depth + k);
#pragma GCC unroll 4
            for (int s = 0; s < S; ++s) acc[s * R + r] = fmadd(wv, av[s], acc[s * R + r]);
        }
        if constexpr (ahead) {
            const char* line = reinterpret_cast<const char*>(next) + k / V::width * step_bytes;
#pragma GCC unroll 8
            for (int l = 0; l < lines; ++l) __builtin_prefetch(line + 64 * l, 0, 3);
        }
    }
    // All the block's sums at once (with hsum4, 4 at a time whatever their slots and rows: a block
    // of 3 rows and 4 slots reduced slot by slot, each hsum4 padded with a zero vector, made a
    // stream step at H = 128 4-6 % slower).
    T sums[S * R];
    lane_sums<V, S * R>(acc, sums);
#pragma GCC unroll 4
    for (int s = 0; s < S; ++s)
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            T sum = sums[s * R + r];
            for (std::int64_t j = k; j < depth; ++j) sum += w[r * depth + j] * a[s * lda + j];
            c[s * ldc + r] = sum;
        }
}

// Rows of W per register block in a pass over S rows of A (out of a group of R): 4, but 3 in a
// pass over 4 rows of A with 16 registers (12 accumulators; the 4 rows of A are read from L1 as
// the FMAs' operands where they do not fit): each weight loaded feeds 4 FMAs, where a pass over 3
// took 4 rows (16 B of weights from L2 or L3 per cycle at 2 FMAs a cycle, against 21). On a Zen 3,
// rows_gemm over 2,048 rows of depth 512 (4 MB, from L3): 4 slots 81-86 GFLOP/s against 69-70 as a
// pass of 3 and one of 1; a stream step with 4 slots 9-18 % faster at H = 512 and 4-6 % at H = 128
// (LSTM and GRU).
template <class V, int R, int S>
constexpr int block_rows() {
    constexpr int most = V::regs == 16 && S >= 4 ? 3 : 4;
    return R < most ? R : most;
}

// Rows h..h+B of a group of R rows of W against S rows of A (dot_pass).
template <class V, int B, int S>
[[gnu::always_inline]] inline void dot_rows_block(bool first, std::int64_t depth, const typename V::value_type* w,
                                                  int h, int R, const typename V::value_type* a, std::int64_t lda,
                                                  typename V::value_type* c, std::int64_t ldc,
                                                  const typename V::value_type* next) {
    const typename V::value_type* wh = w + h * depth;
    if (first)
        dot_block<V, B, S, prefetch_next_rows<V>()>(depth, wh, a, lda, c + h, ldc, h + B < R ? wh + B * depth : next);
    else
        dot_block<V, B, S>(depth, wh, a, lda, c + h, ldc);
}

// One pass of rows r..r+R of W over the next min(S, left) rows of A (with 16 registers, 5 or 6
// left take 3); returns how many it took. Register blocks of block_rows() rows, the last one
// shorter where they do not divide R. Only the first pass over these rows (`first`) requests the
// rows at `next`.
template <class V, int R, int S>
inline int dot_pass(std::int64_t left, bool first, std::int64_t depth, const typename V::value_type* w,
                    const typename V::value_type* a, std::int64_t lda, typename V::value_type* c, std::int64_t ldc,
                    const typename V::value_type* next) {
    if constexpr (S > 1) {
        if (left < S) return dot_pass<V, R, S - 1>(left, first, depth, w, a, lda, c, ldc, next);
    }
    if constexpr (V::regs == 16 && S == 4) {  // 5 or 6 left: 3 + 2 or 3 + 3, not 4 + 1 or 4 + 2
        if (left % 4 == 1 || left % 4 == 2) return dot_pass<V, R, 3>(left, first, depth, w, a, lda, c, ldc, next);
    }
    constexpr int RB = block_rows<V, R, S>(), full = R - R % RB;
#pragma GCC unroll 2
    for (int h = 0; h < full; h += RB) dot_rows_block<V, RB, S>(first, depth, w, h, R, a, lda, c, ldc, next);
    if constexpr (full < R) dot_rows_block<V, R - full, S>(first, depth, w, full, R, a, lda, c, ldc, next);
    return S;
}

// Rows r..r+R of W against every row of A, S at a time (dot_pass: with 16 registers 5 and 6 as
// 3 + 2 and 3 + 3) and the rest in one pass (2 rows of A left: one pass of 2, not two of 1, each
// of which would be bound by its FMA chains' latency); the rows at `next` are read after these.
template <class V, int R, int S>
inline void dot_rows(std::int64_t depth, const typename V::value_type* w, std::int64_t N,
                     const typename V::value_type* a, std::int64_t lda, typename V::value_type* c, std::int64_t ldc,
                     const typename V::value_type* next) {
    for (std::int64_t n = 0; n < N;)
        n += dot_pass<V, R, S>(N - n, n == 0, depth, w, a + n * lda, lda, c + n * ldc, ldc, next);
}

// The rows of W read after row e-1 of rows_gemm's: row e, or after the last row `next`.
template <class T>
inline const T* rows_after(std::int64_t e, std::int64_t rows, std::int64_t depth, const T* w, const T* next) {
    return e < rows ? w + e * depth : next;
}

// All rows of W in groups of RN against every row of A, then a group of 8 and one of 4 where they
// fit, then single rows.
template <class V, int RN>
void row_groups(std::int64_t rows, std::int64_t depth, const typename V::value_type* w, std::int64_t N,
                const typename V::value_type* a, std::int64_t lda, typename V::value_type* c, std::int64_t ldc,
                const typename V::value_type* next) {
    constexpr int S = 4;
    const auto after = [&](std::int64_t e) { return rows_after(e, rows, depth, w, next); };
    std::int64_t r = 0;
    for (; r + RN <= rows; r += RN) dot_rows<V, RN, S>(depth, w + r * depth, N, a, lda, c + r, ldc, after(r + RN));
    if constexpr (RN > 8) {
        if (r + 8 <= rows) {
            dot_rows<V, 8, S>(depth, w + r * depth, N, a, lda, c + r, ldc, after(r + 8));
            r += 8;
        }
    }
    if constexpr (RN > 4) {
        if (r + 4 <= rows) {
            dot_rows<V, 4, S>(depth, w + r * depth, N, a, lda, c + r, ldc, after(r + 4));
            r += 4;
        }
    }
    for (; r < rows; ++r) dot_rows<V, 1, S>(depth, w + r * depth, N, a, lda, c + r, ldc, after(r + 1));
}

template <class V>
void rows_gemm(std::int64_t rows, std::int64_t depth, const typename V::value_type* w, std::int64_t N,
               const typename V::value_type* a, std::int64_t lda, typename V::value_type* c, std::int64_t ldc,
               const typename V::value_type* next) {
    // Four rows of W at a time: the fastest blocking measured for one row of A on AVX-512 (4 rows
    // 120 GB/s from L2, 8 rows 107, 16 rows with a tree reduction 105, software prefetch of the
    // next rows slower still; a plain read of the same bytes 134). More rows of A share each load,
    // up to 4 a pass (block_rows: blocks of 4 rows of W on AVX-512, of 3 or 4 with 16 registers).
    // With 16 registers rows of W go in groups for dot_pass: 12 for 4 to 8 rows of A (blocks of 3
    // and of 4 both divide 12), unless a pass after the first would no longer find the group's
    // rows in L1 beside the rows of A (more than 4 rows of A at depth 512: on a Zen 3, 5 slots at
    // H = 512 took 5 % more time in groups of 12); else 8 (3 slots at H = 512 took about 5 % more
    // time in groups of 12).
    using T = typename V::value_type;
    constexpr int R1 = 4;
    if (!next) next = w + rows * depth;
    if (N == 1) {
        std::int64_t r = 0;
        for (; r + R1 <= rows; r += R1)
            dot_block<V, R1, 1, prefetch_next_rows<V>()>(depth, w + r * depth, a, lda, c + r, ldc,
                                                         rows_after(r + R1, rows, depth, w, next));
        for (; r < rows; ++r)
            dot_rows<V, 1, 1>(depth, w + r * depth, N, a, lda, c + r, ldc, rows_after(r + 1, rows, depth, w, next));
    } else if constexpr (V::regs == 16) {
        if (N == 4 || (N > 4 && (12 + N) * depth * std::int64_t(sizeof(T)) <= 32768))
            row_groups<V, 12>(rows, depth, w, N, a, lda, c, ldc, next);
        else
            row_groups<V, 8>(rows, depth, w, N, a, lda, c, ldc, next);
    } else {
        row_groups<V, 4>(rows, depth, w, N, a, lda, c, ldc, next);
    }
}

// The sum of p[0..n) in eight independent vector chains: a read-bandwidth probe with this ISA's
// loads (python -m fastrnn bench --streaming states a streaming step's bound with it).
template <class V>
typename V::value_type read_sum(const typename V::value_type* p, std::int64_t n) {
    using T = typename V::value_type;
    V acc[8];
    for (auto& a : acc) a = V::zero();
    std::int64_t i = 0;
    for (; i + 8 * V::width <= n; i += 8 * V::width)
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) acc[j] = acc[j] + V::load(p + i + j * V::width);
    T sum = 0;
    for (auto& a : acc) sum += hsum(a);
    for (; i < n; ++i) sum += p[i];
    return sum;
}

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
