// LayerNorm of the recurrent projection (LayerNorm LSTM and GRU, Haste's formulation; SLi-GRU):
// a statistics phase, the normalization and the cell, and for the LSTM a third phase for LN(c_t);
// backward the mirror phases. Row statistics combine per-block partials in block order
// (norm_stats.h), so results do not depend on the thread partition.
#pragma once
#include "steps_plain.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

// The raw recurrent projection of a LayerNorm row, from the first phase to the second (a small
// scratch that stays in cache; training keeps the normalized values in the cache row).
template <class T>
inline T* raw_row(const Recurrence<T>& r, i64 n) { return r.ln_raw + n * r.G * r.H; }


// LayerNorm, first phase: the recurrent GEMM of own units and its per-block row statistics.
template <class Cell, class GV, class CV, bool Train, class T>
void ln_stats_step(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>(), G = Cell::gates;
    constexpr i64 UG = units_group(G);
    const i64 t = time_of(r, s), N = r.N, H = r.H, K = r.K, nblk = (H + NR - 1) / NR;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, H - u0), hs = bb * NR;
        forward_gemm<GV>(tc, s, N, gemm_input(r, s), K, r.packed, nblk, K, 0, G, b, bb, r.w_hh, H, r.reduced_hh);
        for (i64 n = 0; n < N; ++n) {
            if (!row_valid(r.lengths, n, t)) continue;
            T* raw = raw_row(r, n) + u0;
            const T* tr = tc.tile + n * G * hs;
            for (int q = 0; q < G; ++q) copy_units(raw + q * H, tr + q * hs, cnt);
            for (i64 u = 0; u < bb && u * NR < cnt; ++u)
                block_moments<CV>(raw + u * NR, H, G, std::min<i64>(NR, cnt - u * NR), stats_of(r, 0, n, nblk) + 2 * (b + u));
        }
    }
}

// LayerNorm, second phase: normalize the recurrent projection (row statistics combined in
// block order), then the cell: GRU's whole update, or the LSTM's gates and c~ with the block
// statistics of c~.
template <class Cell, class GV, class CV, bool Train, class T>
void ln_gates_step(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>(), G = Cell::gates;
    constexpr i64 UG = units_group(G);
    const i64 t = time_of(r, s), N = r.N, H = r.H, K = r.K, nblk = (H + NR - 1) / NR;
    const T* h_prev = r.hbuf + (s & 1) * N * K;
    T* h_next = r.hbuf + ((s + 1) & 1) * N * K;
    T* hr_next = r.hr ? r.hr + ((s + 1) & 1) * N * K : nullptr;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, H - u0), hs = bb * NR;
        for (i64 n = 0; n < N; ++n) {
            if (!row_valid(r.lengths, n, t)) {
                forward_hold<Cell, Train, false, true>(r, s, t, n, u0, cnt);
                continue;
            }
            double mean, rstd;
            combine_moments(stats_of(r, 0, n, nblk), nblk, H, NR, G, mean, rstd);
            T* base = r.gates + (t * N + n) * r.ld_gates;
            if (Train && b == 0) base[r.row.rstd + 1] = T(rstd);
            const T* raw = raw_row(r, n) + u0;
            T* xhat = base + r.row.xhat_hh + u0;  // training: the cache row
            T* tr = tc.tile + n * G * hs;
            const T mu = T(mean), rs = T(rstd);
            for (int q = 0; q < G; ++q) {
                const T* gain = r.ln_hh + q * H + u0;
                const T* rq = raw + q * H;
                T* tq = tr + q * hs;
                for_lanes<CV>(cnt, [&](auto v, i64 j) {
                    using W = decltype(v);
                    const W xh = (W::load(rq + j) - W::set1(mu)) * W::set1(rs);
                    if constexpr (Train) xh.store(xhat + q * H + j);
                    (W::load(gain + j) * xh).store(tq + j);
                });
            }
            T* grow = base + u0;
            FwdRow<T> row;
            row.xp = grow;
            row.hp = tr;
            row.hs = hs;
            row.bias = r.bias + u0;
            row.bhn = r.bhn ? r.bhn + u0 : nullptr;
            row.c = r.c ? r.c + n * H + u0 : nullptr;
            row.gates = grow;
            row.c_hist = r.c_hist ? r.c_hist + (t * N + n) * H + u0 : nullptr;
            row.H = H;
            row.zc = zc_row(r, t, n, u0);
            if constexpr (Cell::has_c) {  // LSTM: the gates and c~, then LN(c~) in the third phase
                row.ctil = Train ? grow + r.row.chat : r.ln_work + n * H + u0;
                Cell::template forward_gates<Train, CV>(row, cnt);
                for (i64 u = 0; u < bb && u * NR < cnt; ++u)
                    block_moments<CV>(row.ctil + u * NR, H, 1, std::min<i64>(NR, cnt - u * NR),
                                  stats_of(r, 1, n, nblk) + 2 * (b + u));
            } else {
                row.h_prev = h_prev + n * K + u0;
                row.h = h_next + n * K + u0;
                row.y = r.y + (t * N + n) * r.ld_y + u0;
                row.zh = zh_row(r, t, n, u0);
                row.rmask = rmask_row(r, n, u0);
                row.hr = hr_next ? hr_next + n * K + u0 : nullptr;
                row.act = r.act;
                row.cmask = cmask_row(r, n, u0);
                Cell::template forward<Train, CV>(row, cnt);
            }
        }
    }
}

// LayerNorm LSTM, third phase: h_t = o * tanh(LN(c~)).
template <class GV, class CV, bool Train, class T>
void ln_out_step(const Recurrence<T>& r, ThreadCtx<T>&, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>();
    const i64 t = time_of(r, s), N = r.N, H = r.H, K = r.K, nblk = (H + NR - 1) / NR;
    const T* h_prev = r.hbuf + (s & 1) * N * K;
    T* h_next = r.hbuf + ((s + 1) & 1) * N * K;
    T* hr_next = r.hr ? r.hr + ((s + 1) & 1) * N * K : nullptr;
    const i64 u0 = b0 * NR, cnt = std::min(b1 * NR, H) - u0;
    if (cnt <= 0) return;
    for (i64 n = 0; n < N; ++n) {
        if (!row_valid(r.lengths, n, t)) continue;  // held by the second phase
        double mean, rstd;
        combine_moments(stats_of(r, 1, n, nblk), nblk, H, NR, 1, mean, rstd);
        T* base = r.gates + (t * N + n) * r.ld_gates;
        if (Train && b0 == 0) base[r.row.rstd + 2] = T(rstd);
        LNRow<T> q;
        q.o = base + 3 * H + u0;
        q.chat = Train ? base + r.row.chat + u0 : r.ln_work + n * H + u0;
        q.w = r.ln_c_w + u0;
        q.b = r.ln_c_b + u0;
        q.mean = T(mean);
        q.rstd = T(rstd);
        q.h_prev = h_prev + n * K + u0;
        q.zh = zh_row(r, t, n, u0);
        q.rmask = rmask_row(r, n, u0);
        q.h = h_next + n * K + u0;
        q.y = r.y + (t * N + n) * r.ld_y + u0;
        q.hr = hr_next ? hr_next + n * K + u0 : nullptr;
        LNLSTMCell::template forward_out<Train, CV>(q, cnt);
    }
}

// LayerNorm LSTM, backward phase A: dL/dh_t, then the output gate, the LN(c) parameter
// gradients and dL/dc^ with its block sums.
template <class GV, class CV, class T>
void ln_lstm_bwd_out(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>();
    constexpr i64 UG = units_group(1);
    const i64 t = bptt_time_of(r, s), N = r.N, H = r.H, nblk = (H + NR - 1) / NR;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, H - u0), ldt = bb * NR;
        if (s > 0)
            recurrent_grad<LNLSTMCell, true, GV>(r, tc.tile, s - 1, b, bb);
        else
            zero_units(tc.tile, N * ldt);
        for (i64 n = 0; n < N; ++n) {
            T* tile_row = tc.tile + n * ldt;
            T* carry = r.dh + n * H + u0;
            const T* rm = rmask_row(r, n, u0);
            const T* grow = r.gates + (t * N + n) * r.ld_gates + u0;
            T* dgrow = r.dgates + (t * N + n) * r.ld_dgates + u0;
            if (!row_valid(r.lengths, n, t)) {
                pass_carry(carry, tile_row, rm, cnt);
                for (int q = 0; q < 4; ++q) {
                    zero_units(dgrow + q * H, cnt);
                    zero_units(dgrow + r.row.xhat_hh + q * H, cnt);
                }
                continue;
            }
            const T* dy = r.dy ? r.dy + (t * N + n) * r.ld_dy + u0 : nullptr;
            double sq[2] = {0, 0};
            gather_state_grad(tile_row, carry, dy, rm, cnt, tc.grad_h_sq ? sq : nullptr);
            if (tc.grad_h_sq) record_state_grad(tc, N, t, n, sq, c_arrival(r, tc, n, u0, cnt));
            LNRow<T> q;
            q.o = grow + 3 * H;
            q.chat = const_cast<T*>(grow + r.row.chat);
            q.w = r.ln_c_w + u0;
            q.b = r.ln_c_b + u0;
            q.zh = zh_row(r, t, n, u0);
            q.dh = tile_row;
            q.d_o = dgrow + 3 * H;
            q.dh_carry = carry;
            q.dchat = r.ln_work + n * H + u0;
            q.gw = r.g_ln_c_w + u0;
            q.gb = r.g_ln_c_b + u0;
            q.clip = r.bptt_clip;
            LNLSTMCell::template backward_out<CV>(q, cnt);
            static const int one_block[1] = {0};
            for (i64 u = 0; u < bb && u * NR < cnt; ++u)
                block_sums<CV>(q.dchat + u * NR, one_block, H, static_cast<const T*>(nullptr), q.chat + u * NR, 1,
                           std::min<i64>(NR, cnt - u * NR), stats_of(r, 0, n, nblk) + 2 * (b + u));
        }
    }
    if (tc.rows) record_propagation(r, tc, s, t);
}

// LayerNorm LSTM, backward phase B: the LN(c) backward (row sums combined in block order), the
// gate gradients, dL/dc_{t-1}, and the block sums of the recurrent LN backward.
template <class GV, class CV, class T>
void ln_lstm_bwd_gates(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>();
    constexpr i64 UG = units_group(1);
    const i64 t = bptt_time_of(r, s), N = r.N, H = r.H, nblk = (H + NR - 1) / NR;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, H - u0);
        for (i64 n = 0; n < N; ++n) {
            if (!row_valid(r.lengths, n, t)) continue;
            const T* base = r.gates + (t * N + n) * r.ld_gates;
            double m1, m2;
            combine_sums(stats_of(r, 0, n, nblk), nblk, double(H), m1, m2);
            LNRow<T> q;
            q.chat = const_cast<T*>(base + r.row.chat + u0);
            q.dchat = r.ln_work + n * H + u0;
            q.rstd = base[r.row.rstd + 2];
            q.m1 = T(m1);
            q.m2 = T(m2);
            LNLSTMCell::template backward_gates<CV>(backward_row<LNLSTMCell>(r, tc, t, n, u0, static_cast<T*>(nullptr)), q,
                                                    cnt);
            record_dc(tc, t, cnt);
            ln_rec_sums<LNLSTMCell, NR, CV>(r, t, n, b, bb, cnt, nblk);
        }
    }
}

// LayerNorm, last backward phase: dL/d(W_hh h_{t-1}) from the recurrent LN's backward (row sums
// combined in block order) into the recurrent-gradient block, and the gain's gradient.
template <class Cell, class GV, class CV, class T>
void ln_rec_bwd(const Recurrence<T>& r, ThreadCtx<T>&, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>(), G = Cell::gates;
    const i64 t = bptt_time_of(r, s), N = r.N, H = r.H, nblk = (H + NR - 1) / NR;
    const i64 u0 = b0 * NR, cnt = std::min(b1 * NR, H) - u0;
    if (cnt <= 0) return;
    for (i64 n = 0; n < N; ++n) {
        if (!row_valid(r.lengths, n, t)) continue;
        const T* base = r.gates + (t * N + n) * r.ld_gates;
        T* dbase = r.dgates + (t * N + n) * r.ld_dgates;
        double m1d, m2d;
        combine_sums(stats_of(r, 1, n, nblk), nblk, double(G * H), m1d, m2d);
        const T m1 = T(m1d), m2 = T(m2d), rstd = base[r.row.rstd + 1];
        for (int q = 0; q < G; ++q) {
            const T* dv = dbase + ln_rec_block<Cell>(q) * H + u0;
            const T* xh = base + r.row.xhat_hh + q * H + u0;
            const T* gain = r.ln_hh + q * H + u0;
            T* gg = r.g_ln_hh ? r.g_ln_hh + q * H + u0 : nullptr;  // null: a gain without a parameter (SLi-GRU)
            T* out = dbase + r.row.xhat_hh + q * H + u0;
            for_lanes<CV>(cnt, [&](auto v, i64 j) {
                using W = decltype(v);
                W a = W::load(dv + j), x = W::load(xh + j);
                if (gg) fmadd(a, x, W::load(gg + j)).store(gg + j);
                (W::set1(rstd) * (a * W::load(gain + j) - W::set1(m1) - x * W::set1(m2))).store(out + j);
            });
        }
    }
}

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
