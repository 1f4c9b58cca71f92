// Normalization statistics that every thread computes the same way whatever the partition:
// per unit block partial moments and sums combined in block order (the recurrent LayerNorm),
// the LayerNorm of the hoisted input projection row by row, and the batch norm of it column by
// column over the valid rows (Li-GRU).
#pragma once
#include <algorithm>

#include "step_common.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

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

// LayerNorm: the recurrent gradient blocks (dL/d(vh) per gate of W_hh's row blocks).
template <class Cell>
constexpr int ln_rec_block(int q) { return band_dblock(kCellTable[Cell::row], q); }

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

// Batch norm of the hoisted input projection (Li-GRU), torch.nn.BatchNorm1d over its T*N rows:
// with `batch_stats`, every column is normalized with the mean and the biased variance of its
// valid rows (t < lengths[n]; padded rows are not part of the batch) and the running statistics
// are updated, mean <- (1-m) mean + m mu and var <- (1-m) var + m var_unbiased, as torch does;
// without, the running statistics normalize (inference, or a differentiated module in eval mode).
// Rows then hold gain * x^ (the shift is the cell's bias). `rstd_out` non-null (a training
// call) keeps x^ at column `xhat` (zero in padded rows) and 1/sigma of every column there.
// `work` is scratch for 2 * width doubles; column sums run in double, row by row in order.
template <class V, class T>
void bn_rows(T* rows, i64 T_, i64 N, const i64* lengths, i64 ld, i64 width, const T* gain, T* mean, T* var,
             double momentum, T* rstd_out, i64 xhat, bool batch_stats, double* work) {
    double* mu = work;
    double* rs = work + width;
    if (batch_stats) {
        std::fill(mu, mu + 2 * width, 0.0);
        i64 count = 0;
        for (i64 t = 0; t < T_; ++t)
            for (i64 n = 0; n < N; ++n) {
                if (!row_valid(lengths, n, t)) continue;
                const T* v = rows + (t * N + n) * ld;
                for (i64 j = 0; j < width; ++j) mu[j] += double(v[j]);
                ++count;
            }
        const double inv = 1.0 / double(count);
        for (i64 j = 0; j < width; ++j) mu[j] *= inv;
        for (i64 t = 0; t < T_; ++t)
            for (i64 n = 0; n < N; ++n) {
                if (!row_valid(lengths, n, t)) continue;
                const T* v = rows + (t * N + n) * ld;
                for (i64 j = 0; j < width; ++j) rs[j] += (double(v[j]) - mu[j]) * (double(v[j]) - mu[j]);
            }
        const double unbiased = count > 1 ? double(count) / double(count - 1) : 1.0;
        for (i64 j = 0; j < width; ++j) {
            const double var_b = rs[j] * inv;
            mean[j] = T((1.0 - momentum) * double(mean[j]) + momentum * mu[j]);
            var[j] = T((1.0 - momentum) * double(var[j]) + momentum * var_b * unbiased);
            rs[j] = 1.0 / std::sqrt(var_b + kLayerNormEps);
        }
    } else {
        for (i64 j = 0; j < width; ++j) {
            mu[j] = double(mean[j]);
            rs[j] = 1.0 / std::sqrt(double(var[j]) + kLayerNormEps);
        }
    }
    if (rstd_out)
        for (i64 j = 0; j < width; ++j) rstd_out[j] = T(rs[j]);
    for (i64 t = 0; t < T_; ++t)
        for (i64 n = 0; n < N; ++n) {
            T* v = rows + (t * N + n) * ld;
            T* xh = rstd_out ? v + xhat : nullptr;
            if (!row_valid(lengths, n, t)) {
                if (xh) std::fill(xh, xh + width, T(0));
                continue;
            }
            for (i64 j = 0; j < width; ++j) {
                const T x = T((double(v[j]) - mu[j]) * rs[j]);
                if (xh) xh[j] = x;
                v[j] = gain[j] * x;
            }
        }
}

// Backward of bn_rows (a training call): dL/d(W_ih x) into column `xhat` of `drows` from the
// gradient of the pre-activations dv (the first `width` columns of `drows`), over the valid rows
// (zero in padded ones), and the gain's gradient dgain += sum(dv x^):
//   batch statistics:    dx = rstd gain (dv - mean(dv) - x^ mean(dv x^))
//   running statistics:  dx = rstd gain dv
// x^ is read from column `xhat` of `rows` (which `drows` may alias: each value is read first).
template <class V, class T>
void bn_rows_backward(const T* rows, T* drows, i64 T_, i64 N, const i64* lengths, i64 ld, i64 width,
                      const T* gain, const T* rstd, T* g_gain, i64 xhat, bool batch_stats, double* work) {
    double* s1 = work;
    double* s2 = work + width;
    std::fill(s1, s1 + 2 * width, 0.0);
    i64 count = 0;
    for (i64 t = 0; t < T_; ++t)
        for (i64 n = 0; n < N; ++n) {
            if (!row_valid(lengths, n, t)) continue;
            const T* dv = drows + (t * N + n) * ld;
            const T* xh = rows + (t * N + n) * ld + xhat;
            for (i64 j = 0; j < width; ++j) {
                s1[j] += double(dv[j]);
                s2[j] += double(dv[j]) * double(xh[j]);
            }
            ++count;
        }
    const double inv = batch_stats ? 1.0 / double(count) : 0.0;  // the centering terms vanish without
    for (i64 j = 0; j < width; ++j) {
        g_gain[j] = T(double(g_gain[j]) + s2[j]);
        s1[j] *= inv;
        s2[j] *= inv;
    }
    for (i64 t = 0; t < T_; ++t)
        for (i64 n = 0; n < N; ++n) {
            T* dv = drows + (t * N + n) * ld;
            T* out = dv + xhat;
            if (!row_valid(lengths, n, t)) {
                std::fill(out, out + width, T(0));
                continue;
            }
            const T* xh = rows + (t * N + n) * ld + xhat;
            for (i64 j = 0; j < width; ++j) {
                const double x = double(xh[j]);
                out[j] = T(double(rstd[j]) * double(gain[j]) * (double(dv[j]) - s1[j] - x * s2[j]));
            }
        }
}

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
