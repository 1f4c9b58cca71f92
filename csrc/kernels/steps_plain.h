// The phases of the plain cells (RNN, LSTM with or without peepholes, GRU both ways, Li-GRU), forward
// and backward: the recurrent GEMM of a thread's units into a tile, then the cell's pointwise
// function on the tile (csrc/cells/). One barrier per step, two for GRU reset_after=false.
#pragma once
#include "diagnostics.h"
#include "norm_stats.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

// One whole step (RNN, LSTM, GRU reset_after=true) or the second phase of GRU reset_after=false
// (the n gate from W_hn (r*h)). LSTMP: the cell part, writing m_t (the projection follows).
template <class Cell, class GV, class CV, bool Train, bool Proj, class T>
void forward_step(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>();
    constexpr int gemm_gates = Cell::two_phase ? 1 : Cell::gates;
    const i64 t = time_of(r, s), N = r.N, H = r.H, K = r.K, nblk = (H + NR - 1) / NR;
    const i64 UG = forward_units_group<GV>(gemm_gates, N, r.reduced_hh != nullptr);
    const T* h_prev = r.hbuf + (s & 1) * N * K;
    T* h_next = r.hbuf + ((s + 1) & 1) * N * K;
    T* hr_next = r.hr ? r.hr + ((s + 1) & 1) * N * K : nullptr;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, H - u0), hs = bb * NR;
        if constexpr (Cell::two_phase) {  // A = r*h_{t-1}: cache block 3 in training, scratch otherwise
            const T* rh = Train ? r.gates + t * N * r.ld_gates + 3 * H : r.rh;
            forward_gemm<GV>(tc, s, N, rh, Train ? r.ld_gates : r.ld_rh, r.packed, nblk, H, 2, 1, b, bb, r.w_hh, H, r.reduced_hh);
        } else {
            forward_gemm<GV>(tc, s, N, gemm_input(r, s), K, r.packed, nblk, K, 0, Cell::gates, b, bb, r.w_hh, H, r.reduced_hh);
        }
        for (i64 n = 0; n < N; ++n) {
            if (s + 1 < r.steps)
                prefetch_gate_row(r, time_of(r, s + 1), n, u0, cnt, Cell::two_phase ? 2 : 0, Cell::two_phase ? 1 : Cell::gates);
            if (!row_valid(r.lengths, n, t)) {
                forward_hold<Cell, Train, Proj, false>(r, s, t, n, u0, cnt);
                continue;
            }
            T* grow = r.gates + (t * N + n) * r.ld_gates + u0;
            FwdRow<T> row;
            row.xp = grow;
            row.hp = tc.tile + n * gemm_gates * hs;
            row.hs = hs;
            row.bias = r.bias + u0;
            row.bhn = r.bhn ? r.bhn + u0 : nullptr;
            if constexpr (Proj) {
                row.h = row.y = m_rows(r, t) + n * r.ld_m + u0;
            } else {
                row.h_prev = h_prev + n * K + u0;
                row.h = h_next + n * K + u0;
                row.y = r.y + (t * N + n) * r.ld_y + u0;
                row.zh = zh_row(r, t, n, u0);
                row.rmask = rmask_row(r, n, u0);
                row.hr = hr_next ? hr_next + n * K + u0 : nullptr;
            }
            row.c = r.c ? r.c + n * H + u0 : nullptr;
            row.gates = grow;
            row.c_hist = r.c_hist ? r.c_hist + (t * N + n) * H + u0 : nullptr;
            row.H = H;
            row.peep = r.peep ? r.peep + u0 : nullptr;
            row.zc = zc_row(r, t, n, u0);
            row.ctil = Train && r.row.ctil >= 0 ? grow + r.row.ctil : nullptr;
            row.act = r.act;
            row.cmask = cmask_row(r, n, u0);
            Cell::template forward<Train, CV>(row, cnt);
        }
    }
}

// GRU reset_after=false, first phase: r, z and r*h_{t-1}.
template <class Cell, class GV, class CV, bool Train, class T>
void forward_rz_step(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>();
    constexpr i64 UG = units_group(2);
    const i64 t = time_of(r, s), N = r.N, H = r.H, nblk = (H + NR - 1) / NR;
    const T* h_prev = r.hbuf + (s & 1) * N * H;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, H - u0), hs = bb * NR;
        forward_gemm<GV>(tc, s, N, gemm_input(r, s), H, r.packed, nblk, H, 0, 2, b, bb, r.w_hh, H, r.reduced_hh);
        for (i64 n = 0; n < N; ++n) {
            if (s + 1 < r.steps) prefetch_gate_row(r, time_of(r, s + 1), n, u0, cnt, 0, 2);
            T* grow = r.gates + (t * N + n) * r.ld_gates + u0;
            T* rh = Train ? grow + 3 * H : r.rh + n * r.ld_rh + u0;
            if (!row_valid(r.lengths, n, t)) {
                zero_units(grow, cnt);
                zero_units(grow + H, cnt);
                zero_units(rh, cnt);
                continue;
            }
            FwdRow<T> row;
            row.xp = grow;
            row.hp = tc.tile + n * 2 * hs;
            row.hs = hs;
            row.bias = r.bias + u0;
            row.h_prev = h_prev + n * H + u0;
            row.gates = grow;
            row.rh = rh;
            row.H = H;
            row.rmask = rmask_row(r, n, u0);
            Cell::template forward_rz<CV>(row, cnt);
        }
    }
}

// One whole backward step (RNN, LSTM, GRU reset_after=true; LayerNorm GRU's first phase), or
// the first phase of GRU reset_after=false. Processing step s is time t; the step processed
// before it (s-1) is the one that followed t in the forward pass, whose gate gradients feed
// dL/dh_t through W_hh.
template <class Cell, class GV, class CV, bool LN, class T>
void backward_step(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>();
    constexpr i64 UG = units_group(1);
    const i64 t = bptt_time_of(r, s), N = r.N, H = r.H, nblk = (H + NR - 1) / NR;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, H - u0), ldt = bb * NR;
        if (s > 0)
            recurrent_grad<Cell, LN, GV>(r, tc.tile, s - 1, b, bb);
        else
            zero_units(tc.tile, N * ldt);
        for (i64 n = 0; n < N; ++n) {
            T* tile_row = tc.tile + n * ldt;
            T* carry = r.dh + n * H + u0;
            const T* rm = rmask_row(r, n, u0);
            if (!row_valid(r.lengths, n, t)) {  // the carries pass through; no gradient enters
                pass_carry(carry, tile_row, rm, cnt);
                T* dg = r.dgates + (t * N + n) * r.ld_dgates + u0;
                for (int q = 0; q < Cell::dgate_blocks; ++q) zero_units(dg + q * H, cnt);
                if constexpr (LN)
                    for (int q = 0; q < Cell::gates; ++q) zero_units(dg + r.row.xhat_hh + q * H, cnt);
                continue;
            }
            const T* dy = r.dy ? r.dy + (t * N + n) * r.ld_dy + u0 : nullptr;
            double sq[2] = {0, 0};
            gather_state_grad(tile_row, carry, dy, rm, cnt, tc.grad_h_sq ? sq : nullptr);
            if (tc.grad_h_sq) {
                double c_in = 0;
                if constexpr (Cell::has_c) c_in = c_arrival(r, tc, n, u0, cnt);  // dL/dc_t from step t+1
                record_state_grad(tc, N, t, n, sq, c_in);
            }
            Cell::template backward<CV>(backward_row<Cell>(r, tc, t, n, u0, tile_row), cnt);
            if constexpr (Cell::has_c) record_dc(tc, t, cnt);
            if constexpr (LN) ln_rec_sums<Cell, NR, CV>(r, t, n, b, bb, cnt, nblk);
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
        backward_gemm<GV>(N, tc.tile, r.dgates + t * N * r.ld_dgates + 2 * H, r.ld_dgates, r.packed, r.G * H, 2 * H,
                          3 * H, b, bb, false);
        for (i64 n = 0; n < N; ++n) {
            if (!row_valid(r.lengths, n, t)) continue;  // dgates row zeroed by the first phase
            BwdRow<T> row = backward_row<Cell>(r, tc, t, n, u0, static_cast<T*>(nullptr));
            row.d_rh = tc.tile + n * ldt;
            Cell::template backward_r<CV>(row, cnt);
        }
    }
}

// After the last step: dL/dh0 = carry + dG(last step) W_hh (times the recurrent dropout mask),
// for every row and the thread's state units.
template <class Cell, bool LN, class GV, class T>
void backward_final(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>();
    constexpr i64 UG = units_group(1);
    const i64 N = r.N, K = r.K;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, K - u0), ldt = bb * NR;
        recurrent_grad<Cell, LN, GV>(r, tc.tile, r.steps - 1, b, bb);
        for (i64 n = 0; n < N; ++n) pass_carry(r.dh + n * K + u0, tc.tile + n * ldt, rmask_row(r, n, u0), cnt);
    }
}

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
