#include "driver.h"

#include <cstring>
#include <memory>
#include <new>

#include "../dispatch/dispatch.h"
#include "blas.h"

namespace fastrnn {

int cell_gates(const Desc& d) {
    switch (d.cell) {
        case CellKind::LSTM: return 4;
        case CellKind::GRU: return 3;
        default: return 1;
    }
}
int cell_cache_gates(const Desc& d) { return d.cell == CellKind::LSTM || d.cell == CellKind::GRU ? 4 : 0; }
bool cell_has_c(const Desc& d) { return d.cell == CellKind::LSTM; }

namespace {

using i64 = std::int64_t;

// Offsets into the training cache (see cache_elements in driver.h).
struct CacheLayout {
    i64 TN, D, L, DH, gate_block, c_block, dir_block, states;
    bool dropout;

    CacheLayout(const Desc& d, bool dropout_)
        : TN(d.T * d.N), D(d.D), L(d.L), DH(d.D * d.H),
          gate_block(d.T * d.N * cell_cache_gates(d) * d.H), c_block(cell_has_c(d) ? d.T * d.N * d.H : 0),
          dir_block(gate_block + c_block), states(d.L * d.D * d.N * d.H), dropout(dropout_) {}

    i64 layer_block(i64 l) const { return TN * DH * ((dropout && l < L - 1) ? 2 : 1) + D * dir_block; }
    i64 layer(i64 l) const {
        i64 off = 0;
        for (i64 k = 0; k < l; ++k) off += layer_block(k);
        return off;
    }
    i64 y(i64 l) const { return layer(l); }
    i64 dropped_input(i64 l) const { return layer(l) + TN * DH; }  // the input of layer l+1
    i64 gates(i64 l, i64 dir) const { return layer(l) + layer_block(l) - (D - dir) * dir_block; }
    i64 c_hist(i64 l, i64 dir) const { return gates(l, dir) + gate_block; }
    i64 h0() const { return layer(L); }
    i64 c0() const { return h0() + states; }
    i64 total() const { return h0() + states * (c_block ? 2 : 1); }
};

template <class T>
std::unique_ptr<T[]> alloc(i64 n) {
    return std::unique_ptr<T[]>(new T[static_cast<std::size_t>(n > 0 ? n : 1)]);
}

template <class T>
void copy_or_zero(T* dst, const T* src, i64 n) {
    if (src)
        std::memcpy(dst, src, sizeof(T) * static_cast<std::size_t>(n));
    else
        std::memset(static_cast<void*>(dst), 0, sizeof(T) * static_cast<std::size_t>(n));
}

template <class T>
void add_column_sums(const T* a, i64 rows, i64 cols, i64 lda, T* out) {
    for (i64 r = 0; r < rows; ++r)
        for (i64 c = 0; c < cols; ++c) out[c] += a[r * lda + c];
}

// Biases for the hoisted projection: b_ih + b_hh, except GRU reset_after's b_hn, which r multiplies.
template <class T>
void fold_bias(const Desc& d, const LayerWeights<T>& w, bool unfolded_bhn, T* bias, T* bhn) {
    const i64 GH = cell_gates(d) * d.H, H = d.H;
    for (i64 j = 0; j < GH; ++j) {
        const bool keep_apart = unfolded_bhn && j >= 2 * H;
        bias[j] = d.bias ? w.b_ih[j] + (keep_apart ? T(0) : w.b_hh[j]) : T(0);
    }
    for (i64 j = 0; j < H; ++j) bhn[j] = (d.bias && unfolded_bhn) ? w.b_hh[2 * H + j] : T(0);
}

}  // namespace

std::int64_t cache_elements(const Desc& d, bool dropout) { return CacheLayout(d, dropout).total(); }

std::int64_t forward_scratch_elements(const Desc& d, bool training) {
    const i64 GH = cell_gates(d) * d.H, NH = d.N * d.H;
    i64 n = d.T * d.N * GH + d.N * GH + 2 * NH + GH + d.H + d.N * cell_cache_gates(d) * d.H + NH;
    if (!training && d.L > 1) n += 2 * d.T * d.N * d.D * d.H;
    return n;
}

std::int64_t backward_scratch_elements(const Desc& d) {
    const i64 GH = cell_gates(d) * d.H, NH = d.N * d.H;
    const bool separate = d.cell == CellKind::GRU && d.reset_after;
    i64 n = d.T * d.N * GH * (separate ? 2 : 1) + 3 * NH + d.N * GH;
    if (d.L > 1) n += 2 * d.T * d.N * d.D * d.H;
    return n;
}

template <class T>
void forward(const Desc& d, const LayerWeights<T>* w, const T* x, const T* h0, const T* c0,
             const std::int64_t* lengths, const T* masks, T* out, T* h_n, T* c_n, T* cache) {
    const bool train = cache != nullptr;
    const CellKernels<T>& k = cell_kernels<T>(d);
    const bool two_phase = d.cell == CellKind::GRU && !d.reset_after;
    const bool unfolded_bhn = d.cell == CellKind::GRU && d.reset_after;
    const bool has_c = cell_has_c(d);
    const i64 T_ = d.T, N = d.N, H = d.H, D = d.D, DH = D * H, G = cell_gates(d), GH = G * H;
    const i64 cg = cell_cache_gates(d), NH = N * H, TN = T_ * N;
    const CacheLayout lay(d, masks != nullptr);

    // Scratch, allocated once for the whole call (nothing is allocated inside the time loop).
    auto scratch = alloc<T>(forward_scratch_elements(d, train));
    T* xp = scratch.get();
    T* hp = xp + TN * GH;
    T* h = hp + N * GH;
    T* c = h + NH;
    T* bias = c + NH;
    T* bhn = bias + GH;
    T* gate_rows = bhn + H;
    T* rh_rows = gate_rows + N * cg * H;
    T* ybuf = rh_rows + NH;  // inference only: outputs of the layers below the top

    for (i64 l = 0; l < d.L; ++l) {
        const i64 C_l = l == 0 ? d.C : DH;
        const T* X = l == 0 ? x
                     : train ? cache + (masks ? lay.dropped_input(l - 1) : lay.y(l - 1))
                             : ybuf + ((l - 1) % 2) * TN * DH;
        T* Y = train ? cache + lay.y(l) : (l == d.L - 1 ? out : ybuf + (l % 2) * TN * DH);
        for (i64 dir = 0; dir < D; ++dir) {
            const LayerWeights<T>& W = w[l * D + dir];
            const i64 s_idx = l * D + dir;
            // Hoisted input projection for all T*N rows.
            fold_bias(d, W, unfolded_bhn, bias, bhn);
            for (i64 r = 0; r < TN; ++r) std::memcpy(xp + r * GH, bias, sizeof(T) * GH);
            gemm<T>(false, true, TN, GH, C_l, T(1), X, C_l, W.w_ih, C_l, T(1), xp, GH);

            copy_or_zero(h, h0 ? h0 + s_idx * NH : nullptr, NH);
            if (has_c) copy_or_zero(c, c0 ? c0 + s_idx * NH : nullptr, NH);

            StepFwd<T> s{};
            s.N = N; s.H = H; s.lengths = lengths;
            s.ld_xp = GH; s.hp = hp; s.ld_hp = GH; s.bhn = bhn;
            s.h = h; s.c = has_c ? c : nullptr; s.ld_y = DH;
            s.ld_gates = cg * H;
            T* gate_base = train ? cache + lay.gates(l, dir) : nullptr;
            for (i64 step = 0; step < T_; ++step) {
                const i64 t = dir == 0 ? step : T_ - 1 - step;
                s.t = t;
                s.xp = xp + t * N * GH;
                s.y = Y + t * N * DH + dir * H;
                s.gates = train ? gate_base + t * N * cg * H : gate_rows;
                s.c_hist = (train && has_c) ? cache + lay.c_hist(l, dir) + t * NH : nullptr;
                if (two_phase) {
                    s.rh = train ? s.gates + 3 * H : rh_rows;
                    s.ld_rh = train ? cg * H : H;
                    gemm<T>(false, true, N, 2 * H, H, T(1), h, H, W.w_hh, H, T(0), hp, GH);
                    k.fwd_rz(s);
                    gemm<T>(false, true, N, H, H, T(1), s.rh, s.ld_rh, W.w_hh + 2 * H * H, H, T(0), hp + 2 * H, GH);
                } else {
                    gemm<T>(false, true, N, GH, H, T(1), h, H, W.w_hh, H, T(0), hp, GH);
                }
                (train ? k.fwd_train : k.fwd_infer)(s);
            }
            std::memcpy(h_n + s_idx * NH, h, sizeof(T) * NH);
            if (has_c) std::memcpy(c_n + s_idx * NH, c, sizeof(T) * NH);
        }
        if (train && masks && l < d.L - 1) {
            const T* m = masks + l * TN * DH;
            T* xd = cache + lay.dropped_input(l);
            for (i64 i = 0; i < TN * DH; ++i) xd[i] = Y[i] * m[i];
        }
    }
    if (train) {
        std::memcpy(out, cache + lay.y(d.L - 1), sizeof(T) * TN * DH);
        copy_or_zero(cache + lay.h0(), h0, d.L * D * NH);
        if (has_c) copy_or_zero(cache + lay.c0(), c0, d.L * D * NH);
    }
}

template <class T>
void backward(const Desc& d, const LayerWeights<T>* w, const T* x, const std::int64_t* lengths, const T* masks,
              const T* cache, const T* grad_out, const T* grad_h_n, const T* grad_c_n, T* grad_x, T* grad_h0,
              T* grad_c0, const LayerGrads<T>* g) {
    const CellKernels<T>& k = cell_kernels<T>(d);
    const bool two_phase = d.cell == CellKind::GRU && !d.reset_after;
    const bool separate = d.cell == CellKind::GRU && d.reset_after;
    const bool has_c = cell_has_c(d);
    const i64 T_ = d.T, N = d.N, H = d.H, D = d.D, DH = D * H, G = cell_gates(d), GH = G * H;
    const i64 cg = cell_cache_gates(d), NH = N * H, TN = T_ * N;
    const CacheLayout lay(d, masks != nullptr);

    auto scratch = alloc<T>(backward_scratch_elements(d));
    T* dgx_all = scratch.get();
    T* dgh_all = separate ? dgx_all + TN * GH : nullptr;
    T* dh = dgx_all + TN * GH * (separate ? 2 : 1);
    T* dc = dh + NH;
    T* d_rh = dc + NH;
    T* g0 = d_rh + NH;
    T* dybuf = g0 + N * GH;
    const T* h0_all = cache + lay.h0();
    const T* c0_all = has_c ? cache + lay.c0() : nullptr;

    const T* dY = grad_out;  // gradient arriving at the outputs of the current layer (null: none)
    for (i64 l = d.L - 1; l >= 0; --l) {
        const i64 C_l = l == 0 ? d.C : DH;
        const T* X = l == 0 ? x : cache + (masks ? lay.dropped_input(l - 1) : lay.y(l - 1));
        const T* Y = cache + lay.y(l);
        T* dX = l == 0 ? grad_x : dybuf + (l % 2) * TN * DH;
        for (i64 dir = 0; dir < D; ++dir) {
            const LayerWeights<T>& W = w[l * D + dir];
            const LayerGrads<T>& Gr = g[l * D + dir];
            const i64 s_idx = l * D + dir;
            const T* gates = cache + lay.gates(l, dir);
            copy_or_zero(dh, grad_h_n ? grad_h_n + s_idx * NH : nullptr, NH);
            if (has_c) copy_or_zero(dc, grad_c_n ? grad_c_n + s_idx * NH : nullptr, NH);

            StepBwd<T> s{};
            s.N = N; s.H = H; s.T_len = T_; s.lengths = lengths;
            s.ld_gates = cg * H;
            s.c_hist = has_c ? cache + lay.c_hist(l, dir) : nullptr;
            s.c0 = has_c ? c0_all + s_idx * NH : nullptr;
            s.y = Y + dir * H; s.ld_y = DH;
            s.h0 = h0_all + s_idx * NH;
            s.ld_dy = DH;
            s.d_rh = two_phase ? d_rh : nullptr;
            s.dh = dh; s.dc = has_c ? dc : nullptr; s.ld_dg = GH;
            // BPTT: the reverse of the forward processing order.
            for (i64 step = T_ - 1; step >= 0; --step) {
                const i64 t = dir == 0 ? step : T_ - 1 - step;
                s.t = t;
                s.prev_t = dir == 0 ? t - 1 : t + 1;
                s.gates = gates + t * N * cg * H;
                s.dy = dY ? dY + t * N * DH + dir * H : nullptr;
                s.dgx = dgx_all + t * N * GH;
                s.dgh = separate ? dgh_all + t * N * GH : nullptr;
                k.bwd(s);
                if (two_phase) {
                    gemm<T>(false, false, N, H, H, T(1), s.dgx + 2 * H, GH, W.w_hh + 2 * H * H, H, T(0), d_rh, H);
                    k.bwd_r(s);
                    gemm<T>(false, false, N, H, 2 * H, T(1), s.dgx, GH, W.w_hh, H, T(1), dh, H);
                } else {
                    gemm<T>(false, false, N, H, GH, T(1), separate ? s.dgh : s.dgx, GH, W.w_hh, H, T(1), dh, H);
                }
            }
            std::memcpy(grad_h0 + s_idx * NH, dh, sizeof(T) * NH);
            if (has_c) std::memcpy(grad_c0 + s_idx * NH, dc, sizeof(T) * NH);

            // Weight gradients as large GEMMs over all steps.
            const T* dG_h = separate ? dgh_all : dgx_all;
            const i64 h_rows = two_phase ? 2 * H : GH;  // rows of W_hh that multiply h_{t-1}
            gemm<T>(true, false, GH, C_l, TN, T(1), dgx_all, GH, X, C_l, T(1), Gr.w_ih, C_l);
            if (T_ > 1) {  // steps whose h_{t-1} is an output of this direction (zero where padded)
                const T* dg_first = dir == 0 ? dG_h + N * GH : dG_h;
                const T* y_prev = dir == 0 ? Y + dir * H : Y + N * DH + dir * H;
                gemm<T>(true, false, h_rows, H, (T_ - 1) * N, T(1), dg_first, GH, y_prev, DH, T(1), Gr.w_hh, H);
            }
            for (i64 n = 0; n < N; ++n) {  // each sequence's first step reads h0
                const i64 t0 = dir == 0 ? 0 : (lengths ? lengths[n] - 1 : T_ - 1);
                std::memcpy(g0 + n * GH, dG_h + (t0 * N + n) * GH, sizeof(T) * GH);
            }
            gemm<T>(true, false, h_rows, H, N, T(1), g0, GH, s.h0, H, T(1), Gr.w_hh, H);
            if (two_phase)  // W_hn multiplies r*h_{t-1}, cached in the fourth gate block
                gemm<T>(true, false, H, H, TN, T(1), dgx_all + 2 * H, GH, gates + 3 * H, cg * H, T(1),
                        Gr.w_hh + 2 * H * H, H);
            if (d.bias) {
                add_column_sums(dgx_all, TN, GH, GH, Gr.b_ih);
                add_column_sums(dG_h, TN, GH, GH, Gr.b_hh);
            }
            gemm<T>(false, false, TN, C_l, GH, T(1), dgx_all, GH, W.w_ih, C_l, dir == 0 ? T(0) : T(1), dX, C_l);
        }
        if (l > 0) {
            if (masks) {
                const T* m = masks + (l - 1) * TN * DH;
                for (i64 i = 0; i < TN * DH; ++i) dX[i] *= m[i];
            }
            dY = dX;
        }
    }
}

template void forward<float>(const Desc&, const LayerWeights<float>*, const float*, const float*, const float*,
                             const std::int64_t*, const float*, float*, float*, float*, float*);
template void forward<double>(const Desc&, const LayerWeights<double>*, const double*, const double*, const double*,
                              const std::int64_t*, const double*, double*, double*, double*, double*);
template void backward<float>(const Desc&, const LayerWeights<float>*, const float*, const std::int64_t*,
                              const float*, const float*, const float*, const float*, const float*, float*, float*,
                              float*, const LayerGrads<float>*);
template void backward<double>(const Desc&, const LayerWeights<double>*, const double*, const std::int64_t*,
                               const double*, const double*, const double*, const double*, const double*, double*,
                               double*, double*, const LayerGrads<double>*);

}  // namespace fastrnn
