// LSTMP (Sak et al. 2014): the cell phase writes m_t, a second phase over the K state units
// projects it, h_t = W_hr m_t; backward runs them the other way round.
#pragma once
#include "steps_plain.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

// LSTMP, second phase (state units): h_t = W_hr m_t (then zoneout, recurrent dropout).
template <class GV, class CV, bool Train, class T>
void proj_step(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>();
    constexpr i64 UG = units_group(1);
    const i64 t = time_of(r, s), N = r.N, K = r.K, nblk = (K + NR - 1) / NR;
    const T* h_prev = r.hbuf + (s & 1) * N * K;
    T* h_next = r.hbuf + ((s + 1) & 1) * N * K;
    const T* hr_prev = r.hr ? r.hr + (s & 1) * N * K : nullptr;
    T* hr_next = r.hr ? r.hr + ((s + 1) & 1) * N * K : nullptr;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, K - u0), hs = bb * NR;
        forward_gemm<GV>(tc, s, N, m_rows(r, t), r.ld_m, r.packed_hr, nblk, r.H, 0, 1, b, bb, r.w_hr, K, r.reduced_hr);
        for (i64 n = 0; n < N; ++n) {
            const i64 at = n * K + u0;
            T* y = r.y + (t * N + n) * r.ld_y + u0;
            if (!row_valid(r.lengths, n, t)) {
                copy_units(h_next + at, h_prev + at, cnt);
                if (hr_next) copy_units(hr_next + at, hr_prev + at, cnt);
                zero_units(y, cnt);
                continue;
            }
            const T* tr = tc.tile + n * hs;
            const T* zh = zh_row(r, t, n, u0);
            const T* rm = rmask_row(r, n, u0);
            for_lanes<CV>(cnt, [&](auto v, i64 j) {
                using W = decltype(v);
                W h = W::load(tr + j);
                if (zh) h = fmadd(W::load(zh + j), W::load(h_prev + at + j) - h, h);
                h.store(h_next + at + j);
                h.store(y + j);
                if (hr_next) (h * W::load(rm + j)).store(hr_next + at + j);
            });
        }
    }
}

// LSTMP, first backward phase (state units): dL/dh_t, and dL/d(W_hr m_t) for the second phase
// and for dW_hr (zoneout splits dL/dh_t between the update and h_{t-1}).
template <class GV, class CV, class T>
void proj_grad_step(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>();
    constexpr i64 UG = units_group(1);
    const i64 t = bptt_time_of(r, s), N = r.N, K = r.K;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, K - u0), ldt = bb * NR;
        if (s > 0)
            recurrent_grad<LSTMCell<false, true>, false, GV>(r, tc.tile, s - 1, b, bb);
        else
            zero_units(tc.tile, N * ldt);
        for (i64 n = 0; n < N; ++n) {
            T* tile_row = tc.tile + n * ldt;
            T* carry = r.dh + n * K + u0;
            T* dp = r.dproj + (t * N + n) * K + u0;
            const T* rm = rmask_row(r, n, u0);
            if (!row_valid(r.lengths, n, t)) {
                pass_carry(carry, tile_row, rm, cnt);
                zero_units(dp, cnt);
                continue;
            }
            const T* dy = r.dy ? r.dy + (t * N + n) * r.ld_dy + u0 : nullptr;
            double sq[2] = {0, 0};
            gather_state_grad(tile_row, carry, dy, rm, cnt, tc.grad_h_sq ? sq : nullptr);
            if (tc.grad_h_sq) record_state_grad(tc, N, t, n, sq, 0.0);  // c arrives in the cell phase
            if (const T* zh = zh_row(r, t, n, u0)) {
                for (i64 j = 0; j < cnt; ++j) {
                    dp[j] = tile_row[j] * (T(1) - zh[j]);
                    carry[j] = tile_row[j] * zh[j];
                }
            } else {
                copy_units(dp, tile_row, cnt);
                zero_units(carry, cnt);
            }
        }
    }
}

// LSTMP, second backward phase (cell units): dL/dm_t = dL/d(W_hr m_t) W_hr, then the cell.
template <class Cell, class GV, class CV, class T>
void proj_cell_step(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>();
    constexpr i64 UG = units_group(1);
    const i64 t = bptt_time_of(r, s), N = r.N, H = r.H, K = r.K;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, H - u0), ldt = bb * NR;
        backward_gemm<GV>(N, tc.tile, r.dproj + t * N * K, K, r.packed_hr, K, 0, K, b, bb, false);
        for (i64 n = 0; n < N; ++n) {
            if (!row_valid(r.lengths, n, t)) {
                T* dg = r.dgates + (t * N + n) * r.ld_dgates + u0;
                for (int q = 0; q < Cell::dgate_blocks; ++q) zero_units(dg + q * H, cnt);
                continue;
            }
            T* tile_row = tc.tile + n * ldt;
            BwdRow<T> row = backward_row<Cell>(r, tc, t, n, u0, tile_row);
            row.dh_carry = tile_row;  // the cell's (zero) direct part; dL/dh_{t-1} came in phase one
            row.zh = nullptr;
            row.rmask = nullptr;
            if (tc.rows) {  // the propagation records' share of the arriving dL/dc_t
                const double c_in = c_arrival(r, tc, n, u0, cnt);
                tc.rows[n] += c_in;
                tc.rows[N + n] += c_in;
            }
            Cell::template backward<CV>(row, cnt);
            record_dc(tc, t, cnt);
        }
    }
    if (tc.rows) record_propagation(r, tc, s, t);  // the step's last phase
}

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
