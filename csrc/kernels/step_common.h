// What every per-step kernel shares, included by each ISA's file inside its namespace and target
// pragma (csrc/kernels/<isa>.cpp): the time order of a processing step, the recurrent GEMMs on
// the packed W_hh (gemm.h), the row pointers of the optional inputs, padded rows, and the
// rows a cell's backward reads. The phases themselves: steps_plain.h, steps_lstmp.h,
// steps_layernorm.h; the kernel set that collects them: kernel_set.h.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include "interface.h"
#include "../cells/rnn.h"
#include "../cells/lstm.h"
#include "../cells/gru.h"
#include "../cells/layernorm.h"
#include "../cells/ligru.h"
#include "gemm.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

using i64 = std::int64_t;

inline bool row_valid(const i64* lengths, i64 n, i64 t) { return lengths == nullptr || t < lengths[n]; }

// The time step of processing step s: forward passes run in the direction's order, BPTT in
// the opposite one.
template <class T>
inline i64 time_of(const Recurrence<T>& r, i64 s) { return r.reverse ? r.steps - 1 - s : s; }
template <class T>
inline i64 bptt_time_of(const Recurrence<T>& r, i64 s) { return r.reverse ? s : r.steps - 1 - s; }

template <class T>
inline void zero_units(T* p, i64 n) { std::memset(static_cast<void*>(p), 0, sizeof(T) * static_cast<std::size_t>(n)); }
template <class T>
inline void copy_units(T* dst, const T* src, i64 n) { std::memcpy(dst, src, sizeof(T) * static_cast<std::size_t>(n)); }

// Unit blocks per tile: enough panels (gates x blocks) for 8-12 accumulators at small batch.
constexpr i64 units_group(int gemm_gates) { return gemm_gates >= 4 ? 1 : gemm_gates >= 2 ? 2 : 4; }
// The float32 forward step's group with 16 vector registers (AVX2): an LSTM step at N <= 32 takes
// two unit blocks (8 panels): the few-row register blocks get more panels each, and the pointwise
// work runs on twice the units per row (measured on a Zen 3: A (N = 1) 10% faster, B and E 2-4%; at
// N = 64 no gain, its 32 KB tile no longer fits L1 beside the panels). The reduced-precision
// products keep their group (not measured). The group never changes a bit of the result.
template <class GV>
constexpr i64 forward_units_group(int gemm_gates, i64 N, bool reduced) {
    const bool wide = GV::regs == 16 && GV::width == 8 && gemm_gates == 4 && N <= 32 && !reduced;
    return wide ? 2 : units_group(gemm_gates);
}

// tile[N, ng*bb*nr] = A[N, depth] W^T restricted to gates g0..g0+ng of unit blocks b..b+bb, W
// packed forward ([G][nblk][depth][nr]); gate q of unit block u lands at column (q*bb + u)*nr,
// so the tile's gate stride is bb*nr. With `rows` (W row-major [G*units, depth], read in place:
// a streaming plan's weights) the same tile from rows_gemm, zero past `units`. With `low` (int8
// or bf16 inference) the same tile from W packed in the same unit blocks and A converted once per
// processing step s and thread (the thread's context keeps it for the step's other products).
template <class GV, class T>
void forward_gemm(ThreadCtx<T>& tc, i64 s, i64 N, const T* a, i64 lda, const T* packed, i64 nblk, i64 depth, int g0,
                  int ng, i64 b, i64 bb, const T* rows = nullptr, i64 units = 0, const ReducedMatrix* low = nullptr) {
    constexpr int NR = panel_width<GV>();
    T* tile = tc.tile;
    if constexpr (std::is_same_v<T, float>) {
        if (low) {
            const i64 ldt = i64(ng) * bb * NR, bp = low->block_panels;
            if (tc.reduced_of != a || tc.reduced_step != s) {
                low->convert(N, a, lda, tc.reduced_rows, tc.reduced_scales);
                tc.reduced_of = a, tc.reduced_step = s;
            }
            // Consecutive panels in one product, when a block is whole panels (nr 16, 32): a gate's
            // blocks b..b+bb (gate-major), or the ng gates of one block (block-major, bb = 1). The
            // portable kernels' 8-unit blocks each take one panel's first 8 outputs.
            const bool whole = bp * ReducedMatrix::kPanel == NR;
            const auto run = [&](i64 p0, i64 blocks, T* out) {
                low->product(N, tc.reduced_rows, tc.reduced_scales, p0, blocks * bp, blocks * NR, out, ldt, false);
            };
            if (whole && low->block_major && bb == 1)
                run(low->block(g0, b, nblk), ng, tile);
            else
                for (int q = 0; q < ng; ++q)
                    for (i64 u = 0; u < bb; u += whole && !low->block_major ? bb : 1)
                        run(low->block(g0 + q, b + u, nblk), whole && !low->block_major ? bb : 1,
                            tile + (q * bb + u) * NR);
            return;
        }
    }
    if (rows) {
        const i64 ldt = i64(ng) * bb * NR, u0 = b * NR, cnt = std::min(bb * NR, units - u0);
        for (int q = 0; q < ng; ++q) {
            T* out = tile + q * bb * NR;
            const T* w = rows + ((g0 + q) * units + u0) * depth;
            // Read next: the next gate's rows, after the last gate the next unit group's.
            const T* next = q + 1 < ng ? w + units * depth : rows + (g0 * units + u0 + cnt) * depth;
            rows_gemm<GV>(cnt, depth, w, N, a, lda, out, ldt, next);
            if (cnt < bb * NR)
                for (i64 n = 0; n < N; ++n) zero_units(out + n * ldt + cnt, bb * NR - cnt);
        }
        return;
    }
    const T* panels[kMaxTilePanels];
    int np = 0;
    for (int g = g0; g < g0 + ng; ++g)
        for (i64 u = 0; u < bb; ++u) panels[np++] = packed + ((g * nblk + b + u) * depth) * NR;
    tile_gemm<GV>(N, depth, a, lda, panels, np, tile, false);
}

// tile[N, bb*nr] (+)= A[N, k1-k0] W[k0:k1, units of blocks b..b+bb], W packed backward
// ([nblk][depth][nr]).
template <class GV, class T>
void backward_gemm(i64 N, T* tile, const T* a, i64 lda, const T* packed, i64 depth, i64 k0, i64 k1, i64 b, i64 bb,
                   bool accumulate) {
    constexpr int NR = panel_width<GV>();
    const T* panels[kMaxTilePanels];
    for (i64 u = 0; u < bb; ++u) panels[u] = packed + (b + u) * depth * NR + k0 * NR;
    tile_gemm<GV>(N, k1 - k0, a, lda, panels, int(bb), tile, accumulate);
}

// Gates g0..g0+ng of the hoisted projection's row n at step t, units u0..u0+cnt, requested into
// L2 one step ahead, a row at a time between the rows' pointwise work (a burst of them stalls on
// the fill buffers). Past the L2 size they come from L3 or memory in 128-byte pieces 4*H bytes
// apart that no hardware prefetcher follows: the LSTM's pointwise loads stalled on them for 44 %
// of its time at E (200,32,256).
template <class T>
inline void prefetch_gate_row(const Recurrence<T>& r, i64 t, i64 n, i64 u0, i64 cnt, int g0, int ng) {
    constexpr i64 line = 64 / sizeof(T);
    const T* row = r.gates + (t * r.N + n) * r.ld_gates + u0;
    for (int q = g0; q < g0 + ng; ++q)
        for (i64 j = 0; j < cnt; j += line) __builtin_prefetch(row + q * r.H + j, 0, 2);
}

// Row pointers of the variant inputs (null when off).
template <class T>
inline const T* zh_row(const Recurrence<T>& r, i64 t, i64 n, i64 u0) {
    return r.zh ? (r.z_rows ? r.zh + (t * r.N + n) * r.K : r.zh) + u0 : nullptr;
}
template <class T>
inline const T* zc_row(const Recurrence<T>& r, i64 t, i64 n, i64 u0) {
    return r.zc ? (r.z_rows ? r.zc + (t * r.N + n) * r.H : r.zc) + u0 : nullptr;
}
template <class T>
inline const T* rmask_row(const Recurrence<T>& r, i64 n, i64 u0) { return r.rmask ? r.rmask + n * r.K + u0 : nullptr; }
template <class T>
inline const T* cmask_row(const Recurrence<T>& r, i64 n, i64 u0) { return r.cmask ? r.cmask + n * r.H + u0 : nullptr; }

// The recurrent GEMM's input at processing step s: h_{t-1}, or h_{t-1}*mask (recurrent dropout).
template <class T>
inline const T* gemm_input(const Recurrence<T>& r, i64 s) { return (r.hr ? r.hr : r.hbuf) + (s & 1) * r.N * r.K; }

// LSTMP: the rows of m_t (the cache block in training, a scratch [N, H] otherwise).
template <class T>
inline T* m_rows(const Recurrence<T>& r, i64 t) { return r.m + (r.train ? t * r.N * r.ld_m : 0); }

// dL/dh_{t-1} through W_hh from the gate gradients of processing step s (all rows): the part of
// the state gradient that needs every unit of the step, hence the GEMM; units b..b+bb of the
// state. Each band of W_hh rows (the cell table) reads its gate-gradient block (GRU: dn*r for
// W_hn); a band whose input is not h_{t-1} (GRU reset_after=false: r*h) contributes in its own
// phase. LayerNorm cells read the recurrent LN's input gradient.
template <class Cell, bool LN, class GV, class T>
void recurrent_grad(const Recurrence<T>& r, T* tile, i64 s, i64 b, i64 bb) {
    const i64 H = r.H, GH = r.G * H, t = bptt_time_of(r, s);
    const T* dg = r.dgates + t * r.N * r.ld_dgates;
    if constexpr (LN) {
        backward_gemm<GV>(r.N, tile, dg + r.row.xhat_hh, r.ld_dgates, r.packed, GH, 0, GH, b, bb, false);
    } else {
        constexpr CellInfo cell = kCellTable[Cell::row];
        bool accumulate = false;
        for (int i = 0; i < cell.n_bands; ++i) {
            const WeightBand w = cell.bands[i];
            if (w.input_block >= 0) continue;
            backward_gemm<GV>(r.N, tile, dg + w.dblock * H, r.ld_dgates, r.packed, GH, w.row0 * H,
                              (w.row0 + w.rows) * H, b, bb, accumulate);
            accumulate = true;
        }
    }
}


// Padded row in a phase over cell units: the state is held, the output is zero, the cache row
// is zeroed (LSTMP holds its state in the projection phase; its m_t row is zeroed here).
template <class Cell, bool Train, bool Proj, bool LN, class T>
void forward_hold(const Recurrence<T>& r, i64 s, i64 t, i64 n, i64 u0, i64 cnt) {
    const i64 N = r.N, H = r.H, K = r.K;
    if constexpr (Proj) {
        zero_units(m_rows(r, t) + n * r.ld_m + u0, cnt);
    } else {
        const i64 prev = (s & 1) * N * K + n * K + u0, next = ((s + 1) & 1) * N * K + n * K + u0;
        copy_units(r.hbuf + next, r.hbuf + prev, cnt);
        if (r.hr) copy_units(r.hr + next, r.hr + prev, cnt);
        zero_units(r.y + (t * N + n) * r.ld_y + u0, cnt);
    }
    if constexpr (Train) {
        T* g = r.gates + (t * N + n) * r.ld_gates + u0;
        for (int q = 0; q < Cell::cache_gates; ++q) zero_units(g + q * H, cnt);
        if (r.row.ctil >= 0) zero_units(g + r.row.ctil, cnt);
        if constexpr (LN) {
            for (int q = 0; q < Cell::gates; ++q) zero_units(g + r.row.xhat_hh + q * H, cnt);
            if (r.row.chat >= 0) zero_units(g + r.row.chat, cnt);
        }
        if constexpr (Cell::has_c) copy_units(r.c_hist + (t * N + n) * H + u0, r.c + n * H + u0, cnt);
    }
}

// Padded row: the carried gradient passes through (plus the recurrent part through the mask).
template <class T>
void pass_carry(T* carry, const T* tile_row, const T* rmask, i64 cnt) {
    if (rmask)
        for (i64 j = 0; j < cnt; ++j) carry[j] += tile_row[j] * rmask[j];
    else
        for (i64 j = 0; j < cnt; ++j) carry[j] += tile_row[j];
}

template <class Cell, class T>
BwdRow<T> backward_row(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 t, i64 n, i64 u0, T* dh_total) {
    const i64 N = r.N, H = r.H, K = r.K;
    // h_{t-1} / c_{t-1}: the previous step of this sequence in forward order, or the initial state
    // when t is the sequence's first step (t = 0 forward, t = len-1 reverse).
    const i64 tf = r.reverse ? t + 1 : t - 1;
    const bool prev_in_seq = tf >= 0 && tf < r.steps && row_valid(r.lengths, n, tf);
    BwdRow<T> row;
    const i64 at = (t * N + n) * r.ld_gates + u0;
    row.gates = r.gates + at;
    row.dgates = r.dgates + (t * N + n) * r.ld_dgates + u0;
    if constexpr (Cell::has_c) {
        row.c = r.row.ctil >= 0 ? r.gates + at + r.row.ctil : r.c_hist + (t * N + n) * H + u0;
        row.c_prev = prev_in_seq ? r.c_hist + (tf * N + n) * H + u0 : r.c0 + n * H + u0;
    }
    if (K == H) row.h_prev = prev_in_seq ? r.y + (tf * N + n) * r.ld_y + u0 : r.h0 + n * K + u0;
    row.h = r.y + (t * N + n) * r.ld_y + u0;
    row.dh = dh_total;
    row.dh_carry = r.dh + n * K + u0;
    row.dc = r.dc ? r.dc + n * H + u0 : nullptr;
    row.dc_total = tc.grad_c_sq ? tc.dc_total : nullptr;
    row.clip = r.bptt_clip;
    row.H = H;
    row.peep = r.peep ? r.peep + u0 : nullptr;
    row.zh = zh_row(r, t, n, u0);
    row.zc = zc_row(r, t, n, u0);
    row.rmask = rmask_row(r, n, u0);
    row.cmask = cmask_row(r, n, u0);
    return row;
}

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
