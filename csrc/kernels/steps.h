// The per-step kernels around the cell policies, written once and included by each ISA's file
// (inside that ISA's namespace and target pragma). One call handles one processing step of one
// layer-direction for a thread's range of unit blocks [b0, b1): the recurrent GEMM of every gate
// of those units into a small tile (packed W_hh panels, fastrnn's microkernel), then the cell's
// pointwise function on the tile. Padded rows (t >= lengths[n]) are handled here, so cells only
// ever see valid rows. The driver owns the time loop, the threads and the barriers.
//
// Variants (see the cell headers for the equations): the state h_t has K units (K = P with an
// LSTMP projection, else H); LSTMP adds a projection phase over state units after the cell
// (forward) and before it (backward); LayerNorm cells add phases that combine per-block row
// statistics in block order (layernorm.h); recurrent dropout makes the recurrent GEMM read
// h_{t-1}*mask (a second state buffer, `hr`) and scales its gradient by the mask; zoneout masks
// reach the cells.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include "../core/desc.h"
#include "../cells/rnn.h"
#include "../cells/lstm.h"
#include "../cells/gru.h"
#include "../cells/layernorm.h"
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

// tile[N, ng*bb*nr] = A[N, depth] W^T restricted to gates g0..g0+ng of unit blocks b..b+bb, W
// packed forward ([G][nblk][depth][nr]); gate q of unit block u lands at column (q*bb + u)*nr,
// so the tile's gate stride is bb*nr.
template <class GV, class T>
void forward_gemm(i64 N, T* tile, const T* a, i64 lda, const T* packed, i64 nblk, i64 depth, int g0, int ng, i64 b,
                  i64 bb) {
    constexpr int NR = panel_width<GV>();
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

// The recurrent GEMM's input at processing step s: h_{t-1}, or h_{t-1}*mask (recurrent dropout).
template <class T>
inline const T* gemm_input(const Recurrence<T>& r, i64 s) { return (r.hr ? r.hr : r.hbuf) + (s & 1) * r.N * r.K; }

// LSTMP: the rows of m_t (the cache block in training, a scratch [N, H] otherwise).
template <class T>
inline T* m_rows(const Recurrence<T>& r, i64 t) { return r.m + (r.train ? t * r.N * r.ld_m : 0); }

// dL/dh_{t-1} through W_hh from the gate gradients of processing step s (all rows): the part of
// the state gradient that needs every unit of the step, hence the GEMM; units b..b+bb of the
// state. Cells whose W_hh rows see different gradients (GRU) read them from different blocks;
// LayerNorm cells from the recurrent LN's input gradient.
template <class Cell, bool LN, class GV, class T>
void recurrent_grad(const Recurrence<T>& r, T* tile, i64 s, i64 b, i64 bb) {
    const i64 H = r.H, GH = r.G * H, t = bptt_time_of(r, s);
    const T* dg = r.dgates + t * r.N * r.ld_dgates;
    if constexpr (LN) {
        backward_gemm<GV>(r.N, tile, dg + r.row.xhat_hh, r.ld_dgates, r.packed, GH, 0, GH, b, bb, false);
    } else if constexpr (Cell::gates == 3 && Cell::two_phase) {  // GRU reset_after=false: r, z here; n via r*h
        backward_gemm<GV>(r.N, tile, dg, r.ld_dgates, r.packed, GH, 0, 2 * H, b, bb, false);
    } else if constexpr (Cell::gates == 3) {  // GRU reset_after=true: d(W_hn h) = dn*r, kept in block 3
        backward_gemm<GV>(r.N, tile, dg, r.ld_dgates, r.packed, GH, 0, 2 * H, b, bb, false);
        backward_gemm<GV>(r.N, tile, dg + 3 * H, r.ld_dgates, r.packed, GH, 2 * H, 3 * H, b, bb, true);
    } else {
        backward_gemm<GV>(r.N, tile, dg, r.ld_dgates, r.packed, GH, 0, GH, b, bb, false);
    }
}

// ---------------------------------------------------------------- LayerNorm statistics

// Sum of a vector's lanes in lane order (the same arithmetic on every thread).
template <class V>
inline typename V::value_type sum_lanes(V v) {
    using T = typename V::value_type;
    T buf[V::width];
    v.store(buf);
    T s = buf[0];
    for (int i = 1; i < V::width; ++i) s += buf[i];
    return s;
}

// Mean and M2 (sum of squared deviations from it) of `cnt` values of each of `ng` gates
// (stride gs), two passes with vector accumulators: one unit block's partial statistics of a
// row. Blocks start at multiples of the panel width, so the vector/tail split of a block does
// not depend on the thread partition.
template <class V, class T>
inline void block_moments(const T* p, i64 gs, int ng, i64 cnt, double* out) {
    constexpr int Wd = V::width;
    const i64 nv = Wd > 1 ? cnt / Wd * Wd : 0;
    V acc = V::zero();
    T tail = T(0);
    for (int q = 0; q < ng; ++q) {
        const T* a = p + q * gs;
        for (i64 j = 0; j < nv; j += Wd) acc = acc + V::load(a + j);
        for (i64 j = nv; j < cnt; ++j) tail += a[j];
    }
    const T mean = (sum_lanes(acc) + tail) / T(ng * cnt);
    const V m = V::set1(mean);
    acc = V::zero();
    tail = T(0);
    for (int q = 0; q < ng; ++q) {
        const T* a = p + q * gs;
        for (i64 j = 0; j < nv; j += Wd) {
            const V d = V::load(a + j) - m;
            acc = fmadd(d, d, acc);
        }
        for (i64 j = nv; j < cnt; ++j) tail += (a[j] - mean) * (a[j] - mean);
    }
    out[0] = double(mean);
    out[1] = double(sum_lanes(acc) + tail);
}

// Sums of a*w and a*w*x over `ng` gates of `cnt` units (gate q of a at blk[q]*H, of w and x at
// q*H; w null: 1): a block's partial sums of a LN backward.
template <class V, class T>
inline void block_sums(const T* a, const int* blk, i64 H, const T* w, const T* x, int ng, i64 cnt, double* out) {
    constexpr int Wd = V::width;
    const i64 nv = Wd > 1 ? cnt / Wd * Wd : 0;
    V s1 = V::zero(), s2 = V::zero();
    T t1 = T(0), t2 = T(0);
    for (int q = 0; q < ng; ++q) {
        const T *aq = a + blk[q] * H, *wq = w ? w + q * H : nullptr, *xq = x + q * H;
        for (i64 j = 0; j < nv; j += Wd) {
            const V v = wq ? V::load(aq + j) * V::load(wq + j) : V::load(aq + j);
            s1 = s1 + v;
            s2 = fmadd(v, V::load(xq + j), s2);
        }
        for (i64 j = nv; j < cnt; ++j) {
            const T v = wq ? aq[j] * wq[j] : aq[j];
            t1 += v;
            t2 += v * xq[j];
        }
    }
    out[0] = double(sum_lanes(s1) + t1);
    out[1] = double(sum_lanes(s2) + t2);
}

// Chan et al.'s pairwise update of (count, mean, M2) by a block's (count, mean, M2).
inline void chan_update(double& n, double& mu, double& m2, double nb, double mb, double m2b) {
    const double d = mb - mu, tot = n + nb;
    mu += d * nb / tot;
    m2 += m2b + d * d * n * nb / tot;
    n = tot;
}

// Combines the (mean, M2) partials of blocks 0..nblk-1 of one row in block order: the same
// arithmetic on every thread, whatever the partition. Returns the mean and 1/sqrt(var + eps).
inline void combine_moments(const double* st, i64 nblk, i64 H, int NR, int ng, double& mean, double& rstd) {
    double n = 0, mu = 0, m2 = 0;
    for (i64 b = 0; b < nblk; ++b) chan_update(n, mu, m2, double(ng * std::min<i64>(NR, H - b * NR)), st[2 * b], st[2 * b + 1]);
    mean = mu;
    rstd = 1.0 / std::sqrt(m2 / n + kLayerNormEps);
}

inline void combine_sums(const double* st, i64 nblk, double count, double& m1, double& m2) {
    double s1 = 0, s2 = 0;
    for (i64 b = 0; b < nblk; ++b) {
        s1 += st[2 * b];
        s2 += st[2 * b + 1];
    }
    m1 = s1 / count;
    m2 = s2 / count;
}

// The statistics arrays of one direction: [2][N][nblk][2] (two sets, so a phase can write one
// while other threads still read the other).
template <class T>
inline double* stats_of(const Recurrence<T>& r, int set, i64 n, i64 nblk) { return r.stats + ((set * r.N + n) * nblk) * 2; }

// ---------------------------------------------------------------- forward

// The raw recurrent projection of a LayerNorm row, from the first phase to the second (a small
// scratch that stays in cache; training keeps the normalized values in the cache row).
template <class T>
inline T* raw_row(const Recurrence<T>& r, i64 n) { return r.ln_raw + n * r.G * r.H; }

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

// One whole step (RNN, LSTM, GRU reset_after=true) or the second phase of GRU reset_after=false
// (the n gate from W_hn (r*h)). LSTMP: the cell part, writing m_t (the projection follows).
template <class Cell, class GV, class CV, bool Train, bool Proj, class T>
void forward_step(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>();
    constexpr int gemm_gates = Cell::two_phase ? 1 : Cell::gates;
    constexpr i64 UG = units_group(gemm_gates);
    const i64 t = time_of(r, s), N = r.N, H = r.H, K = r.K, nblk = (H + NR - 1) / NR;
    const T* h_prev = r.hbuf + (s & 1) * N * K;
    T* h_next = r.hbuf + ((s + 1) & 1) * N * K;
    T* hr_next = r.hr ? r.hr + ((s + 1) & 1) * N * K : nullptr;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, H - u0), hs = bb * NR;
        if constexpr (Cell::two_phase) {  // A = r*h_{t-1}: cache block 3 in training, scratch otherwise
            const T* rh = Train ? r.gates + t * N * r.ld_gates + 3 * H : r.rh;
            forward_gemm<GV>(N, tc.tile, rh, Train ? r.ld_gates : r.ld_rh, r.packed, nblk, H, 2, 1, b, bb);
        } else {
            forward_gemm<GV>(N, tc.tile, gemm_input(r, s), K, r.packed, nblk, K, 0, Cell::gates, b, bb);
        }
        for (i64 n = 0; n < N; ++n) {
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
        forward_gemm<GV>(N, tc.tile, gemm_input(r, s), H, r.packed, nblk, H, 0, 2, b, bb);
        for (i64 n = 0; n < N; ++n) {
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
        forward_gemm<GV>(N, tc.tile, m_rows(r, t), r.ld_m, r.packed_hr, nblk, r.H, 0, 1, b, bb);
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

// LayerNorm, first phase: the recurrent GEMM of own units and its per-block row statistics.
template <class Cell, class GV, class CV, bool Train, class T>
void ln_stats_step(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 b0, i64 b1) {
    constexpr int NR = panel_width<GV>(), G = Cell::gates;
    constexpr i64 UG = units_group(G);
    const i64 t = time_of(r, s), N = r.N, H = r.H, K = r.K, nblk = (H + NR - 1) / NR;
    for (i64 b = b0; b < b1; b += UG) {
        const i64 bb = std::min(UG, b1 - b), u0 = b * NR, cnt = std::min(bb * NR, H - u0), hs = bb * NR;
        forward_gemm<GV>(N, tc.tile, gemm_input(r, s), K, r.packed, nblk, K, 0, G, b, bb);
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
            if constexpr (Cell::gates == 4) {
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

// dh_total = carry + recurrent part (tile, times the recurrent dropout mask) + dL/dy_t into the
// tile row. With `sq` (diagnostics), adds the sums of squares of what arrived through the
// recurrence (carry + tile) to sq[0] and of the total to sq[1].
template <class T>
void gather_state_grad(T* tile_row, const T* carry, const T* dy, const T* rmask, i64 cnt, double* sq) {
    if (rmask)
        for (i64 j = 0; j < cnt; ++j) tile_row[j] = tile_row[j] * rmask[j] + carry[j];
    else
        for (i64 j = 0; j < cnt; ++j) tile_row[j] += carry[j];
    if (sq) sq[0] += sum_squares(tile_row, cnt);
    if (dy)
        for (i64 j = 0; j < cnt; ++j) tile_row[j] += dy[j];
    if (sq) sq[1] += dy ? sum_squares(tile_row, cnt) : sq[0];
}

// The diagnostics of one row's units at a step: the total dL/dh_t norm, and for the
// propagation records what arrived through the recurrence and the state gradient, with c_in the
// squares of the LSTM's arriving dL/dc_t (c_arrival).
template <class T>
void record_state_grad(const ThreadCtx<T>& tc, i64 N, i64 t, i64 n, const double* sq, double c_in) {
    tc.grad_h_sq[t] += sq[1];
    if (tc.rows) {
        tc.rows[n] += sq[0] + c_in;      // arrived through the recurrence
        tc.rows[N + n] += sq[1] + c_in;  // the state gradient at this step
    }
}

// Sum of squares of the LSTM's dL/dc_t arriving from step t+1 (own units), for the propagation
// records (0 when they are off).
template <class T>
double c_arrival(const Recurrence<T>& r, const ThreadCtx<T>& tc, i64 n, i64 u0, i64 cnt) {
    return tc.rows ? sum_squares(r.dc + n * r.H + u0, cnt) : 0.0;
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
    return row;
}

template <class T>
inline void record_dc(ThreadCtx<T>& tc, i64 t, i64 cnt) {
    if (tc.grad_c_sq) tc.grad_c_sq[t] += sum_squares(tc.dc_total, cnt);
}

// LayerNorm: the recurrent gradient blocks (dL/d(vh) per gate of W_hh's row blocks).
template <class Cell>
constexpr int ln_rec_block(int q) { return Cell::gates == 3 && q == 2 ? 3 : q; }

// LayerNorm: block sums of the recurrent LN backward (dv*g and dv*g*x^) of one row's units.
template <class Cell, int NR, class CV, class T>
void ln_rec_sums(const Recurrence<T>& r, i64 t, i64 n, i64 b, i64 bb, i64 cnt, i64 nblk) {
    constexpr int G = Cell::gates;
    const int blk[4] = {ln_rec_block<Cell>(0), ln_rec_block<Cell>(1), ln_rec_block<Cell>(2), ln_rec_block<Cell>(3)};
    const i64 H = r.H, u0 = b * NR;
    const T* dv = r.dgates + (t * r.N + n) * r.ld_dgates + u0;
    const T* xh = r.gates + (t * r.N + n) * r.ld_gates + r.row.xhat_hh + u0;
    for (i64 u = 0; u < bb && u * NR < cnt; ++u)
        block_sums<CV>(dv + u * NR, blk, H, r.ln_hh + u0 + u * NR, xh + u * NR, G, std::min<i64>(NR, cnt - u * NR),
                   stats_of(r, 1, n, nblk) + 2 * (b + u));
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
            T* gg = r.g_ln_hh + q * H + u0;
            T* out = dbase + r.row.xhat_hh + q * H + u0;
            for_lanes<CV>(cnt, [&](auto v, i64 j) {
                using W = decltype(v);
                W a = W::load(dv + j), x = W::load(xh + j);
                fmadd(a, x, W::load(gg + j)).store(gg + j);
                (W::set1(rstd) * (a * W::load(gain + j) - W::set1(m1) - x * W::set1(m2))).store(out + j);
            });
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

// ---------------------------------------------------------------- hoisted LayerNorm

constexpr i64 kLNChunk = 64;  // row statistics are accumulated in chunks, combined in double

// LayerNorm of the hoisted input projection, per row over its `width` pre-activations: the
// rows then hold gain * x^ (what the cells add); training keeps x^ (at column `xhat`) and
// 1/sigma (at column `rstd`) for backward.
template <class V, class T>
void ln_rows(T* rows, i64 n_rows, i64 ld, i64 width, const T* gain, i64 xhat, i64 rstd, bool train) {
    for (i64 r = 0; r < n_rows; ++r) {
        T* v = rows + r * ld;
        double n = 0, mu = 0, m2 = 0, st[2];
        for (i64 j0 = 0; j0 < width; j0 += kLNChunk) {
            const i64 cnt = std::min(kLNChunk, width - j0);
            block_moments<V>(v + j0, 0, 1, cnt, st);
            chan_update(n, mu, m2, double(cnt), st[0], st[1]);
        }
        const T m = T(mu), rs = T(1.0 / std::sqrt(m2 / n + kLayerNormEps));
        T* xh_out = train ? v + xhat : nullptr;
        for_lanes<V>(width, [&](auto lane, i64 j) {
            using W = decltype(lane);
            const W xh = (W::load(v + j) - W::set1(m)) * W::set1(rs);
            if (xh_out) xh.store(xh_out + j);
            (W::load(gain + j) * xh).store(v + j);
        });
        if (train) v[rstd] = rs;
    }
}

// Backward of ln_rows: dL/d(W_ih x) (into column `xhat` of `drows`) from the gradient of the
// pre-activations dv (the first `width` columns of `drows`); adds the gain's gradient.
template <class V, class T>
void ln_rows_backward(const T* rows, T* drows, i64 n_rows, i64 ld, i64 width, const T* gain, T* g_gain, i64 xhat,
                      i64 rstd) {
    static const int one_block[1] = {0};
    for (i64 r = 0; r < n_rows; ++r) {
        const T* xh = rows + r * ld + xhat;
        T* dv = drows + r * ld;
        double s1 = 0, s2 = 0, st[2];
        for (i64 j0 = 0; j0 < width; j0 += kLNChunk) {
            block_sums<V>(dv + j0, one_block, 0, gain + j0, xh + j0, 1, std::min(kLNChunk, width - j0), st);
            s1 += st[0];
            s2 += st[1];
        }
        const T m1 = T(s1 / double(width)), m2 = T(s2 / double(width)), rs = rows[r * ld + rstd];
        T* out = dv + xhat;
        for_lanes<V>(width, [&](auto lane, i64 j) {
            using W = decltype(lane);
            const W a = W::load(dv + j), x = W::load(xh + j);
            fmadd(a, x, W::load(g_gain + j)).store(g_gain + j);
            (W::set1(rs) * (a * W::load(gain + j) - W::set1(m1) - x * W::set1(m2))).store(out + j);
        });
    }
}

// ---------------------------------------------------------------- kernel tables

template <class T>
CellKernels<T> no_kernels() {
    CellKernels<T> k{};
    for (int p = 0; p < kMaxPhases; ++p) k.fwd_on_state[p] = k.bwd_on_state[p] = false;
    return k;
}

template <class Cell, class GV, class CV, class T>
CellKernels<T> make_cell_kernels() {
    CellKernels<T> k = no_kernels<T>();
    k.bwd[0] = &backward_step<Cell, GV, CV, false, T>;
    k.bwd_final = &backward_final<Cell, false, GV, T>;
    if constexpr (Cell::two_phase) {
        k.fwd_phases = k.bwd_phases = 2;
        k.fwd_train[0] = &forward_rz_step<Cell, GV, CV, true, T>;
        k.fwd_infer[0] = &forward_rz_step<Cell, GV, CV, false, T>;
        k.fwd_train[1] = &forward_step<Cell, GV, CV, true, false, T>;
        k.fwd_infer[1] = &forward_step<Cell, GV, CV, false, false, T>;
        k.bwd[1] = &backward_r_step<Cell, GV, CV, T>;
    } else {
        k.fwd_phases = k.bwd_phases = 1;
        k.fwd_train[0] = &forward_step<Cell, GV, CV, true, false, T>;
        k.fwd_infer[0] = &forward_step<Cell, GV, CV, false, false, T>;
    }
    return k;
}

// LSTMP: cell phase then projection phase forward; the reverse backward.
template <bool Peep, class GV, class CV, class T>
CellKernels<T> make_lstmp_kernels() {
    using Cell = LSTMCell<Peep, true>;
    CellKernels<T> k = no_kernels<T>();
    k.fwd_phases = k.bwd_phases = 2;
    k.fwd_train[0] = &forward_step<Cell, GV, CV, true, true, T>;
    k.fwd_infer[0] = &forward_step<Cell, GV, CV, false, true, T>;
    k.fwd_train[1] = &proj_step<GV, CV, true, T>;
    k.fwd_infer[1] = &proj_step<GV, CV, false, T>;
    k.fwd_on_state[1] = true;
    k.bwd[0] = &proj_grad_step<GV, CV, T>;
    k.bwd_on_state[0] = true;
    k.bwd[1] = &proj_cell_step<Cell, GV, CV, T>;
    k.bwd_final = &backward_final<Cell, false, GV, T>;
    return k;
}

template <class GV, class CV, class T>
CellKernels<T> make_ln_lstm_kernels() {
    CellKernels<T> k = no_kernels<T>();
    k.fwd_phases = k.bwd_phases = 3;
    k.fwd_train[0] = &ln_stats_step<LNLSTMCell, GV, CV, true, T>;
    k.fwd_infer[0] = &ln_stats_step<LNLSTMCell, GV, CV, false, T>;
    k.fwd_train[1] = &ln_gates_step<LNLSTMCell, GV, CV, true, T>;
    k.fwd_infer[1] = &ln_gates_step<LNLSTMCell, GV, CV, false, T>;
    k.fwd_train[2] = &ln_out_step<GV, CV, true, T>;
    k.fwd_infer[2] = &ln_out_step<GV, CV, false, T>;
    k.bwd[0] = &ln_lstm_bwd_out<GV, CV, T>;
    k.bwd[1] = &ln_lstm_bwd_gates<GV, CV, T>;
    k.bwd[2] = &ln_rec_bwd<LNLSTMCell, GV, CV, T>;
    k.bwd_final = &backward_final<LNLSTMCell, true, GV, T>;
    return k;
}

template <class GV, class CV, class T>
CellKernels<T> make_ln_gru_kernels() {
    using Cell = GRUCell<true, true>;
    CellKernels<T> k = no_kernels<T>();
    k.fwd_phases = k.bwd_phases = 2;
    k.fwd_train[0] = &ln_stats_step<Cell, GV, CV, true, T>;
    k.fwd_infer[0] = &ln_stats_step<Cell, GV, CV, false, T>;
    k.fwd_train[1] = &ln_gates_step<Cell, GV, CV, true, T>;
    k.fwd_infer[1] = &ln_gates_step<Cell, GV, CV, false, T>;
    k.bwd[0] = &backward_step<Cell, GV, CV, true, T>;
    k.bwd[1] = &ln_rec_bwd<Cell, GV, CV, T>;
    k.bwd_final = &backward_final<Cell, true, GV, T>;
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
    ks.ln_rows = &ln_rows<CV, T>;
    ks.ln_rows_backward = &ln_rows_backward<CV, T>;
    ks.rnn_tanh = make_cell_kernels<RNNCell<false, false>, GV, CV, T>();
    ks.rnn_relu = make_cell_kernels<RNNCell<true, false>, GV, CV, T>();
    ks.lstm = make_cell_kernels<LSTMCell<false, false>, GV, CV, T>();
    ks.gru = make_cell_kernels<GRUCell<true, false>, GV, CV, T>();
    ks.gru_v1 = make_cell_kernels<GRUCell<false, false>, GV, CV, T>();
    ks.rnn_tanh_reg = make_cell_kernels<RNNCell<false, true>, GV, CV, T>();
    ks.rnn_relu_reg = make_cell_kernels<RNNCell<true, true>, GV, CV, T>();
    ks.lstm_reg = make_cell_kernels<LSTMCell<false, true>, GV, CV, T>();
    ks.gru_reg = make_cell_kernels<GRUCell<true, true>, GV, CV, T>();
    ks.gru_v1_reg = make_cell_kernels<GRUCell<false, true>, GV, CV, T>();
    ks.lstm_peep = make_cell_kernels<LSTMCell<true, true>, GV, CV, T>();
    ks.lstmp = make_lstmp_kernels<false, GV, CV, T>();
    ks.lstmp_peep = make_lstmp_kernels<true, GV, CV, T>();
    ks.ln_lstm = make_ln_lstm_kernels<GV, CV, T>();
    ks.ln_gru = make_ln_gru_kernels<GV, CV, T>();
    ks.activation = &activation<CV, T>;
    return ks;
}

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
