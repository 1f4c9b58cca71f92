// The per-step kernels around the cell policies, written once and included by each ISA's file
// (inside that ISA's namespace and target pragma). One call handles one processing step of one
// layer-direction for a thread's range of unit blocks [b0, b1): the recurrent GEMM of every gate
// of those units into a small tile (packed W_hh panels, fastrnn's microkernel), then the cell's
// pointwise function on the tile. Padded rows (t >= lengths[n]) are handled here, so cells only
// ever see valid rows. The driver owns the time loop, the threads and the barriers.
#pragma once
#include <algorithm>
#include <cstring>
#include "../core/desc.h"
#include "../cells/rnn.h"
#include "../cells/lstm.h"
#include "../cells/gru.h"
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

// Unit blocks per tile: enough panels (gates x blocks) for 8-12 accumulators at small batch.
constexpr i64 units_group(int gemm_gates) { return gemm_gates >= 4 ? 1 : gemm_gates >= 2 ? 2 : 4; }

// tile[N, ng*bb*nr] = A[N, H] W_hh^T restricted to gates g0..g0+ng of unit blocks b..b+bb; gate
// q of unit block u lands at column (q*bb + u)*nr, so the tile's gate stride is bb*nr.
template <class GV, class T>
void forward_gemm(const Recurrence<T>& r, T* tile, const T* a, i64 lda, int g0, int ng, i64 b, i64 bb) {
    constexpr int NR = panel_width<GV>();
    const i64 nblk = (r.H + NR - 1) / NR;
    const T* panels[kMaxTilePanels];
    int np = 0;
    for (int g = g0; g < g0 + ng; ++g)
        for (i64 u = 0; u < bb; ++u) panels[np++] = r.packed + ((g * nblk + b + u) * r.H) * NR;
    tile_gemm<GV>(r.N, r.H, a, lda, panels, np, tile, false);
}

// tile[N, bb*nr] (+)= A[N, k1-k0] W_hh[k0:k1, units of blocks b..b+bb] (backward packing).
template <class GV, class T>
void backward_gemm(const Recurrence<T>& r, T* tile, const T* a, i64 lda, i64 k0, i64 k1, i64 b, i64 bb,
                   bool accumulate) {
    constexpr int NR = panel_width<GV>();
    const i64 GH = r.G * r.H;
    const T* panels[kMaxTilePanels];
    for (i64 u = 0; u < bb; ++u) panels[u] = r.packed + (b + u) * GH * NR + k0 * NR;
    tile_gemm<GV>(r.N, k1 - k0, a, lda, panels, int(bb), tile, accumulate);
}

// dL/dh_{t-1} through W_hh from the gate gradients of processing step s (all rows): the part of
// the state gradient that needs every unit of the step, hence the GEMM. Cells whose W_hh rows
// see different gradients (GRU) read them from different cache blocks.
template <class Cell, class GV, class T>
void recurrent_grad(const Recurrence<T>& r, T* tile, i64 s, i64 b, i64 bb) {
    const i64 H = r.H, t = bptt_time_of(r, s);
    const T* dg = r.dgates + t * r.N * r.ld_dgates;
    if constexpr (Cell::gates == 3 && Cell::two_phase) {  // GRU reset_after=false: r, z here; n via r*h
        backward_gemm<GV>(r, tile, dg, r.ld_dgates, 0, 2 * H, b, bb, false);
    } else if constexpr (Cell::gates == 3) {  // GRU reset_after=true: d(W_hn h) = dn*r, kept in block 3
        backward_gemm<GV>(r, tile, dg, r.ld_dgates, 0, 2 * H, b, bb, false);
        backward_gemm<GV>(r, tile, dg + 3 * H, r.ld_dgates, 2 * H, 3 * H, b, bb, true);
    } else {
        backward_gemm<GV>(r, tile, dg, r.ld_dgates, 0, Cell::gates * H, b, bb, false);
    }
}

// ---------------------------------------------------------------- forward

// Padded row: the state is held, the output is zero, the cache row is zeroed.
template <class Cell, bool Train, class T>
void forward_hold(const Recurrence<T>& r, i64 t, i64 n, i64 u0, i64 cnt, const T* h_prev, T* h_next) {
    const i64 N = r.N, H = r.H;
    std::memcpy(h_next + n * H + u0, h_prev + n * H + u0, sizeof(T) * std::size_t(cnt));
    zero_units(r.y + (t * N + n) * r.ld_y + u0, cnt);
    if constexpr (Train) {
        T* g = r.gates + (t * N + n) * r.ld_gates + u0;
        for (int q = 0; q < Cell::cache_gates; ++q) zero_units(g + q * H, cnt);
        if constexpr (Cell::has_c) std::memcpy(r.c_hist + (t * N + n) * H + u0, r.c + n * H + u0, sizeof(T) * std::size_t(cnt));
    }
}

// One whole step (RNN, LSTM, GRU reset_after=true) or the second phase of GRU reset_after=false
// (the n gate from W_hn (r*h)).
template <class Cell, class GV, class CV, bool Train, class T>
void forward_step(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>();
    constexpr int gemm_gates = Cell::two_phase ? 1 : Cell::gates;
    constexpr i64 UG = units_group(gemm_gates);
    const i64 t = time_of(r, s), N = r.N, H = r.H;
    const T* h_prev = r.hbuf + (s & 1) * N * H;
    T* h_next = r.hbuf + ((s + 1) & 1) * N * H;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, H - u0), hs = bb * NR;
        if constexpr (Cell::two_phase) {  // A = r*h_{t-1}: cache block 3 in training, scratch otherwise
            const T* rh = Train ? r.gates + t * N * r.ld_gates + 3 * H : r.rh;
            forward_gemm<GV>(r, tc.tile, rh, Train ? r.ld_gates : r.ld_rh, 2, 1, b, bb);
        } else {
            forward_gemm<GV>(r, tc.tile, h_prev, H, 0, Cell::gates, b, bb);
        }
        for (i64 n = 0; n < N; ++n) {
            if (!row_valid(r.lengths, n, t)) {
                forward_hold<Cell, Train>(r, t, n, u0, cnt, h_prev, h_next);
                continue;
            }
            T* grow = r.gates + (t * N + n) * r.ld_gates + u0;
            const FwdRow<T> row{grow, tc.tile + n * gemm_gates * hs, hs, r.bias + u0, r.bhn ? r.bhn + u0 : nullptr,
                                h_prev + n * H + u0, h_next + n * H + u0, r.c ? r.c + n * H + u0 : nullptr,
                                r.y + (t * N + n) * r.ld_y + u0, grow,
                                r.c_hist ? r.c_hist + (t * N + n) * H + u0 : nullptr, nullptr, H};
            Cell::template forward<Train, CV>(row, cnt);
        }
    }
}

// GRU reset_after=false, first phase: r, z and r*h_{t-1}.
template <class Cell, class GV, class CV, bool Train, class T>
void forward_rz_step(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>();
    constexpr i64 UG = units_group(2);
    const i64 t = time_of(r, s), N = r.N, H = r.H;
    const T* h_prev = r.hbuf + (s & 1) * N * H;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, H - u0), hs = bb * NR;
        forward_gemm<GV>(r, tc.tile, h_prev, H, 0, 2, b, bb);
        for (i64 n = 0; n < N; ++n) {
            T* grow = r.gates + (t * N + n) * r.ld_gates + u0;
            T* rh = Train ? grow + 3 * H : r.rh + n * r.ld_rh + u0;
            if (!row_valid(r.lengths, n, t)) {
                zero_units(grow, cnt);
                zero_units(grow + H, cnt);
                zero_units(rh, cnt);
                continue;
            }
            const FwdRow<T> row{grow, tc.tile + n * 2 * hs, hs, r.bias + u0, nullptr, h_prev + n * H + u0, nullptr,
                                nullptr, nullptr, grow, nullptr, rh, H};
            Cell::template forward_rz<CV>(row, cnt);
        }
    }
}

// ---------------------------------------------------------------- backward

// Sum of squares in double with 8 independent accumulators (one chain would be latency-bound,
// and the compiler may not reorder a floating-point reduction by itself).
template <class T>
double sum_squares(const T* v, i64 n) {
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    i64 j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; ++k) a[k] += double(v[j + k]) * double(v[j + k]);
    for (; j < n; ++j) a[0] += double(v[j]) * double(v[j]);
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// dh_total = carry + recurrent part (tile) + dL/dy_t into the tile row. With `sq` (diagnostics),
// adds the sums of squares of what arrived through the recurrence (carry + tile) to sq[0] and of
// the total to sq[1].
template <class T>
void gather_state_grad(T* tile_row, const T* carry, const T* dy, i64 cnt, double* sq) {
    for (i64 j = 0; j < cnt; ++j) tile_row[j] += carry[j];
    if (sq) sq[0] += sum_squares(tile_row, cnt);
    if (dy)
        for (i64 j = 0; j < cnt; ++j) tile_row[j] += dy[j];
    if (sq) sq[1] += dy ? sum_squares(tile_row, cnt) : sq[0];
}

// Per-row sums of this step (this thread's units) -> the propagation records: for rows valid at
// this step and at the step BPTT processed before it, what arrived through the recurrence and
// what that previous step's state gradient was. rows: [carried, state, previous state] x N.
template <class T>
void record_propagation(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 t) {
    const i64 N = r.N, tp = s > 0 ? bptt_time_of(r, s - 1) : -1;
    double *carried = tc.rows, *state = tc.rows + N, *previous = tc.rows + 2 * N;
    for (i64 n = 0; n < N; ++n) {
        const bool now = row_valid(r.lengths, n, t), before = tp >= 0 && row_valid(r.lengths, n, tp);
        if (now && before) {
            tc.carried_sq[t] += carried[n];
            tc.prev_state_sq[t] += previous[n];
        }
        previous[n] = now ? state[n] : 0.0;
        carried[n] = state[n] = 0.0;
    }
}

template <class Cell, class T>
BwdRow<T> backward_row(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 t, i64 n, i64 u0, T* dh_total) {
    const i64 N = r.N, H = r.H;
    // h_{t-1} / c_{t-1}: the previous step of this sequence in forward order, or the initial state
    // when t is the sequence's first step (t = 0 forward, t = len-1 reverse).
    const i64 tf = r.reverse ? t + 1 : t - 1;
    const bool prev_in_seq = tf >= 0 && tf < r.steps && row_valid(r.lengths, n, tf);
    const T* h_prev = prev_in_seq ? r.y + (tf * N + n) * r.ld_y + u0 : r.h0 + n * H + u0;
    const T* c_prev = nullptr;
    if constexpr (Cell::has_c) c_prev = prev_in_seq ? r.c_hist + (tf * N + n) * H + u0 : r.c0 + n * H + u0;
    return BwdRow<T>{r.gates + (t * N + n) * r.ld_gates + u0,
                     r.dgates + (t * N + n) * r.ld_dgates + u0,
                     Cell::has_c ? r.c_hist + (t * N + n) * H + u0 : nullptr,
                     c_prev,
                     h_prev,
                     r.y + (t * N + n) * r.ld_y + u0,
                     dh_total,
                     r.dh + n * H + u0,
                     r.dc ? r.dc + n * H + u0 : nullptr,
                     nullptr,
                     tc.grad_c_sq ? tc.dc_total : nullptr,
                     r.bptt_clip,
                     H};
}

// One whole backward step (RNN, LSTM, GRU reset_after=true), or the first phase of GRU
// reset_after=false. Processing step s is time t; the step processed before it (s-1) is the
// one that followed t in the forward pass, whose gate gradients feed dL/dh_t through W_hh.
template <class Cell, class GV, class CV, class T>
void backward_step(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>();
    constexpr i64 UG = units_group(1);
    const i64 t = bptt_time_of(r, s), N = r.N, H = r.H;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, H - u0), ldt = bb * NR;
        if (s > 0)
            recurrent_grad<Cell, GV>(r, tc.tile, s - 1, b, bb);
        else
            zero_units(tc.tile, N * ldt);
        for (i64 n = 0; n < N; ++n) {
            T* tile_row = tc.tile + n * ldt;
            T* carry = r.dh + n * H + u0;
            if (!row_valid(r.lengths, n, t)) {  // the carries pass through; no gradient enters
                for (i64 j = 0; j < cnt; ++j) carry[j] += tile_row[j];
                T* dg = r.dgates + (t * N + n) * r.ld_dgates + u0;
                for (int q = 0; q < Cell::dgate_blocks; ++q) zero_units(dg + q * H, cnt);
                continue;
            }
            const T* dy = r.dy ? r.dy + (t * N + n) * r.ld_dy + u0 : nullptr;
            double sq[2] = {0, 0};
            gather_state_grad(tile_row, carry, dy, cnt, tc.grad_h_sq ? sq : nullptr);
            if (tc.grad_h_sq) {
                tc.grad_h_sq[t] += sq[1];
                if (tc.rows) {
                    double c_in = 0;
                    if constexpr (Cell::has_c) c_in = sum_squares(r.dc + n * H + u0, cnt);  // dL/dc_t from step t+1
                    tc.rows[n] += sq[0] + c_in;      // arrived through the recurrence
                    tc.rows[N + n] += sq[1] + c_in;  // the state gradient at this step
                }
            }
            Cell::template backward<CV>(backward_row<Cell>(r, tc, t, n, u0, tile_row), cnt);
            if constexpr (Cell::has_c)
                if (tc.grad_c_sq) tc.grad_c_sq[t] += sum_squares(tc.dc_total, cnt);
        }
    }
    if (tc.rows) record_propagation(r, tc, s, t);
}

// GRU reset_after=false, second phase: dL/d(r*h) = dn W_hn needs every unit's dn (hence the
// barrier before it), then dr and the r*(.) part of dL/dh_{t-1}.
template <class Cell, class GV, class CV, class T>
void backward_r_step(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>();
    constexpr i64 UG = units_group(1);
    const i64 t = bptt_time_of(r, s), N = r.N, H = r.H;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, H - u0), ldt = bb * NR;
        backward_gemm<GV>(r, tc.tile, r.dgates + t * N * r.ld_dgates + 2 * H, r.ld_dgates, 2 * H, 3 * H, b, bb, false);
        for (i64 n = 0; n < N; ++n) {
            if (!row_valid(r.lengths, n, t)) continue;  // dgates row zeroed by the first phase
            BwdRow<T> row = backward_row<Cell>(r, tc, t, n, u0, static_cast<T*>(nullptr));
            row.d_rh = tc.tile + n * ldt;
            Cell::template backward_r<CV>(row, cnt);
        }
    }
}

// After the last step: dL/dh0 = carry + dG(last step) W_hh, for every row.
template <class Cell, class GV, class T>
void backward_final(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>();
    constexpr i64 UG = units_group(1);
    const i64 N = r.N, H = r.H;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, H - u0), ldt = bb * NR;
        recurrent_grad<Cell, GV>(r, tc.tile, r.steps - 1, b, bb);
        for (i64 n = 0; n < N; ++n)
            for (i64 j = 0; j < cnt; ++j) r.dh[n * H + u0 + j] += tc.tile[n * ldt + j];
    }
}

template <class Cell, class GV, class CV, class T>
CellKernels<T> make_cell_kernels() {
    CellKernels<T> k{};
    k.bwd[0] = &backward_step<Cell, GV, CV, T>;
    k.bwd_final = &backward_final<Cell, GV, T>;
    if constexpr (Cell::two_phase) {
        k.fwd_phases = k.bwd_phases = 2;
        k.fwd_train[0] = &forward_rz_step<Cell, GV, CV, true, T>;
        k.fwd_infer[0] = &forward_rz_step<Cell, GV, CV, false, T>;
        k.fwd_train[1] = &forward_step<Cell, GV, CV, true, T>;
        k.fwd_infer[1] = &forward_step<Cell, GV, CV, false, T>;
        k.bwd[1] = &backward_r_step<Cell, GV, CV, T>;
    } else {
        k.fwd_phases = k.bwd_phases = 1;
        k.fwd_train[0] = &forward_step<Cell, GV, CV, true, T>;
        k.fwd_infer[0] = &forward_step<Cell, GV, CV, false, T>;
    }
    return k;
}

template <class CV, class T>
void activation(int fn, const T* x, T* y, i64 n) {
    for_lanes<CV>(n, [&](auto v, i64 j) {
        using W = decltype(v);
        const W a = W::load(x + j);
        (fn == 0 ? vsigmoid(a) : fn == 1 ? vtanh(a) : vrelu(a)).store(y + j);
    });
}

// GV: the vector type of the recurrent GEMM; CV: the vector type of the cells' pointwise math.
template <class GV, class CV, class T>
KernelSet<T> make_kernel_set() {
    KernelSet<T> ks{};
    ks.nr = panel_width<GV>();
    ks.pack_forward = &pack_forward<GV, T>;
    ks.pack_backward = &pack_backward<GV, T>;
    ks.rnn_tanh = make_cell_kernels<RNNCell<false>, GV, CV, T>();
    ks.rnn_relu = make_cell_kernels<RNNCell<true>, GV, CV, T>();
    ks.lstm = make_cell_kernels<LSTMCell, GV, CV, T>();
    ks.gru = make_cell_kernels<GRUCell<true>, GV, CV, T>();
    ks.gru_v1 = make_cell_kernels<GRUCell<false>, GV, CV, T>();
    ks.activation = &activation<CV, T>;
    return ks;
}

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
