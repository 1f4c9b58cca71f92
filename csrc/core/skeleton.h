// The driver skeleton that the CPU driver (csrc/core/driver.cpp) and the CUDA driver
// (csrc/cuda/driver_impl.cuh) share: the training cache's layout, the carving of one workspace,
// and the walk of a forward and a backward call over layers and directions (which inputs each
// layer reads, where its outputs and cached rows go, the hoisted GEMMs, the weight gradients).
//
// A backend supplies what differs between the devices, through a small interface:
//   ws                                   its scratch (carved with Carver): per direction xp, bias,
//                                        bhn, hbuf, c, rh (forward) or dgates, dh, dc (backward);
//                                        ybuf / dybuf between layers, gather
//   gemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)    BLAS-style, row-major
//   column_sums(a, rows, cols, lda, out)                         out[c] += sum_r a[r, c]
//   copy(dst, src, n), copy_or_zero(dst, src, n), multiply(a, m, out, n)  (out = a * m)
//   gather_first_steps(dg, ld_dg, rows, lengths, reverse, out)   each sequence's first-step row
//   fold_bias(W, bias, bhn)
//   input_gemm(s_idx, m, n, k, X, W, C, ldc)   the hoisted C = X W^T of layer-direction s_idx
//                                              (the CPU's int8 inference quantizes it)
// and the hooks of a pass: prepare (a direction, before its steps: packing, normalization, the
// variants' pointers), run (the steps of one layer), and in backward the gradient pieces that
// variants add (see forward_walk and backward_walk).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "desc.h"

// AddressSanitizer builds (FASTRNN_SANITIZE=address): poisoned gaps between host scratch regions.
#if defined(__SANITIZE_ADDRESS__)
#define FASTRNN_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FASTRNN_ASAN 1
#endif
#endif
#ifdef FASTRNN_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace fastrnn {

// Offsets into the training cache (cache_elements in driver.h). Per layer: its output y
// [T, N, D*K] (and, with dropout below the last layer, the dropped copy the next layer reads), then
// per direction its cached rows [T, N, row.ld], the cell states [T, N, H] (LSTM) and the batch
// norm's 1/sigma [G*H] (Li-GRU); after the layers the initial states h0 (and c0).
struct CacheLayout {
    std::int64_t TN, D, L, DH, gate_block, c_block, bn_block, dir_block, states, c_states;
    bool dropout;
    RowLayout row;

    CacheLayout(const Desc& d, bool dropout_)
        : TN(d.T * d.N), D(d.D), L(d.L), DH(d.D * state_size(d)),
          gate_block(d.T * d.N * row_layout(d).ld), c_block(cell_has_c(d) ? d.T * d.N * d.H : 0),
          bn_block(bn_ih(d) ? cell_gates(d) * d.H : 0), dir_block(gate_block + c_block + bn_block),
          states(d.L * d.D * d.N * state_size(d)), c_states(cell_has_c(d) ? d.L * d.D * d.N * d.H : 0),
          dropout(dropout_), row(row_layout(d)) {}

    std::int64_t layer_block(std::int64_t l) const { return TN * DH * ((dropout && l < L - 1) ? 2 : 1) + D * dir_block; }
    std::int64_t layer(std::int64_t l) const {
        std::int64_t off = 0;
        for (std::int64_t k = 0; k < l; ++k) off += layer_block(k);
        return off;
    }
    std::int64_t y(std::int64_t l) const { return layer(l); }
    std::int64_t dropped_input(std::int64_t l) const { return layer(l) + TN * DH; }  // the input of layer l+1
    std::int64_t gates(std::int64_t l, std::int64_t dir) const { return layer(l) + layer_block(l) - (D - dir) * dir_block; }
    std::int64_t c_hist(std::int64_t l, std::int64_t dir) const { return gates(l, dir) + gate_block; }
    std::int64_t bn_rstd(std::int64_t l, std::int64_t dir) const { return c_hist(l, dir) + c_block; }  // 1/sigma per column
    std::int64_t h0() const { return layer(L); }
    std::int64_t c0() const { return h0() + states; }
    std::int64_t total() const { return h0() + states + c_states; }
};

// One workspace carved into aligned regions. A sizing pass (base == null) and the real pass run
// the same carving code, so the size and the layout cannot disagree. `poison` (host memory under
// AddressSanitizer): a poisoned gap after each region, so a kernel that runs past its region into
// the next one is caught (they share one allocation).
class Carver {
   public:
    Carver(void* base, std::size_t align, bool poison = false)
        : base_(static_cast<char*>(base)), align_(align), poison_(poison) {}
    template <class U>
    U* take(std::int64_t n) {
        U* p = base_ ? reinterpret_cast<U*>(base_ + used_) : nullptr;
        const std::size_t bytes = std::size_t(std::max<std::int64_t>(n, 0)) * sizeof(U);
        const std::size_t start = used_;
        used_ += (bytes + align_ - 1) / align_ * align_;
#ifdef FASTRNN_ASAN
        if (poison_) {
            if (base_) ASAN_POISON_MEMORY_REGION(base_ + start + bytes, used_ + align_ - start - bytes);
            used_ += align_;
        }
#else
        (void)start;
#endif
        return p;
    }
    std::size_t used() const { return used_; }  // bytes

   private:
    char* base_;
    std::size_t align_;
    bool poison_;
    std::size_t used_ = 0;
};

// dW_hh rows [r0, r1) += sum over steps of dG^T h_{t-1}, where `dg` points at the gradient
// column that goes with row r0. h_{t-1} is this direction's previous output Y (zero where padded,
// where the gate gradients are zero too; row stride ld_y) except at each sequence's first step,
// which reads h0; `alt` replaces h_{t-1} by another cached per-step input (GRU reset_after=false:
// r*h_{t-1}). dW has K columns.
template <class B, class T>
void accumulate_w_hh(B& b, const Desc& d, std::int64_t dir, const std::int64_t* lengths, std::int64_t r0,
                     std::int64_t r1, const T* dg, std::int64_t ld_dg, const T* Y, std::int64_t ld_y, const T* alt,
                     std::int64_t ld_alt, const T* h0, T* dW, T* gather) {
    const std::int64_t T_ = d.T, N = d.N, K = state_size(d), rows = r1 - r0;
    T* dWr = dW + r0 * K;
    if (alt) {
        b.gemm(true, false, rows, K, T_ * N, T(1), dg, ld_dg, alt, ld_alt, T(1), dWr, K);
        return;
    }
    if (T_ > 1) {
        const T* dg_first = dir == 0 ? dg + N * ld_dg : dg;
        const T* y_prev = dir == 0 ? Y : Y + N * ld_y;
        b.gemm(true, false, rows, K, (T_ - 1) * N, T(1), dg_first, ld_dg, y_prev, ld_y, T(1), dWr, K);
    }
    b.gather_first_steps(dg, ld_dg, rows, lengths, dir == 1, gather);
    b.gemm(true, false, rows, K, N, T(1), gather, rows, h0, K, T(1), dWr, K);
}

// A forward call. Per layer and direction: the common fields of its Recurrence, the hoisted input
// projection of all T*N rows, the biases and initial states, then the backend's
// `prepare(r, W, lay, l, dir)`; per layer `run(rec, train)`; the final states, inter-layer
// dropout and, in training, the cache's copies of the output and the initial states.
template <class B, class T>
void forward_walk(B& b, const Desc& d, const LayerWeights<T>* w, const T* x, const T* h0, const T* c0,
                  const std::int64_t* lengths, const T* masks, T* out, T* h_n, T* c_n, T* cache) {
    using i64 = std::int64_t;
    const bool train = cache != nullptr, has_c = cell_has_c(d);
    const i64 T_ = d.T, N = d.N, H = d.H, K = state_size(d), D = d.D, DK = D * K, G = cell_gates(d), GH = G * H;
    const i64 NK = N * K, NH = N * H, TN = T_ * N;
    const CacheLayout lay(d, masks != nullptr);
    auto& ws = b.ws;
    for (i64 l = 0; l < d.L; ++l) {
        const i64 C_l = l == 0 ? d.C : DK;
        const T* X = l == 0 ? x
                     : train ? cache + (masks ? lay.dropped_input(l - 1) : lay.y(l - 1))
                             : ws.ybuf + ((l - 1) % 2) * TN * DK;
        T* Y = train ? cache + lay.y(l) : (l == d.L - 1 ? out : ws.ybuf + (l % 2) * TN * DK);
        Recurrence<T> rec[2]{};
        for (i64 dir = 0; dir < D; ++dir) {
            const LayerWeights<T>& W = w[l * D + dir];
            const i64 s_idx = l * D + dir;
            Recurrence<T>& r = rec[dir];
            r.steps = T_; r.N = N; r.H = H; r.G = G; r.K = K;
            r.reverse = dir == 1; r.train = train; r.lengths = lengths;
            r.bias = ws.bias[dir]; r.bhn = ws.bhn[dir];
            const bool in_cache = train && lay.row.ld > 0;  // the cell turns the projection into the cached rows
            r.row = lay.row;
            r.gates = in_cache ? cache + lay.gates(l, dir) : ws.xp[dir];
            r.ld_gates = in_cache ? lay.row.ld : GH;
            r.hbuf = ws.hbuf[dir];
            r.c = has_c ? ws.c[dir] : nullptr;
            r.c_hist = train && has_c ? cache + lay.c_hist(l, dir) : nullptr;
            r.rh = ws.rh[dir]; r.ld_rh = H;
            r.y = Y + dir * K; r.ld_y = DK;
            r.bptt_clip = T(0);
            b.input_gemm(s_idx, TN, GH, C_l, X, W.w_ih, r.gates, r.ld_gates);
            b.fold_bias(W, ws.bias[dir], ws.bhn[dir]);
            b.copy_or_zero(r.hbuf, h0 ? h0 + s_idx * NK : nullptr, NK);
            if (has_c) b.copy_or_zero(r.c, c0 ? c0 + s_idx * NH : nullptr, NH);
            b.prepare(r, W, lay, l, dir);
        }
        b.run(rec, train);
        for (i64 dir = 0; dir < D; ++dir) {
            const i64 s_idx = l * D + dir;
            b.copy(h_n + s_idx * NK, rec[dir].hbuf + (T_ & 1) * NK, NK);
            if (has_c) b.copy(c_n + s_idx * NH, rec[dir].c, NH);
        }
        if (train && masks && l < d.L - 1) b.multiply(Y, masks + l * TN * DK, cache + lay.dropped_input(l), TN * DK);
    }
    if (train) {
        b.copy(out, cache + lay.y(d.L - 1), TN * DK);
        b.copy_or_zero(cache + lay.h0(), h0, d.L * D * NK);
        if (has_c) b.copy_or_zero(cache + lay.c0(), c0, d.L * D * NH);
    }
}

// The recurrent input of a direction's W_hh gradient: h_{t-1} as the recurrent GEMM read it
// (outputs y with row stride ld, and h0).
template <class T>
struct RecurrentInput {
    const T* y;
    std::int64_t ld;
    const T* h0;
};

// A backward call, layers in reverse. Per direction: the common fields of its Recurrence and its
// incoming state gradients, then the backend's `prepare(r, W, Gr, lay, l, dir)`; per layer
// `run(rec)`; then per direction the gradients: `finish(r, dir, s_idx)` (diagnostics),
// `input_grad(r, W, Gr, lay, l, dir)` (the gradient of W_ih x, through an input normalization),
// dW_ih, `recurrent_input(r, y, ld, s_idx)`, dW_hh into `w_hh_grad(Gr, s_idx, dir)` band by band
// (the cell table) then `finish_w_hh_grad(dW, Gr, s_idx)`, `variant_grads(r, Gr, lay, dir)`, the
// bias sums and the input gradient.
template <class B, class T>
void backward_walk(B& b, const Desc& d, const LayerWeights<T>* w, const T* x, const std::int64_t* lengths,
                   const T* masks, T* cache, const T* grad_out, const T* grad_h_n, const T* grad_c_n, T* grad_x,
                   T* grad_h0, T* grad_c0, const LayerGrads<T>* g, T bptt_clip) {
    using i64 = std::int64_t;
    const bool has_c = cell_has_c(d);
    const CellInfo& cell = cell_info(d);
    const i64 T_ = d.T, N = d.N, H = d.H, K = state_size(d), D = d.D, DK = D * K, G = cell_gates(d), GH = G * H;
    const i64 NK = N * K, NH = N * H, TN = T_ * N;
    const CacheLayout lay(d, masks != nullptr);
    const i64 ld_dg = lay.row.ld ? lay.row.ld : H;
    const T clip = bptt_clip > T(0) ? bptt_clip : std::numeric_limits<T>::infinity();
    auto& ws = b.ws;

    const T* h0_all = cache + lay.h0();
    const T* c0_all = has_c ? cache + lay.c0() : nullptr;
    const T* dY = grad_out;  // gradient arriving at the outputs of the current layer (null: none)
    for (i64 l = d.L - 1; l >= 0; --l) {
        const i64 C_l = l == 0 ? d.C : DK;
        const T* X = l == 0 ? x : cache + (masks ? lay.dropped_input(l - 1) : lay.y(l - 1));
        const T* Y = cache + lay.y(l);
        T* dX = l == 0 ? grad_x : ws.dybuf + (l % 2) * TN * DK;
        Recurrence<T> rec[2]{};
        for (i64 dir = 0; dir < D; ++dir) {
            const i64 s_idx = l * D + dir;
            Recurrence<T>& r = rec[dir];
            r.steps = T_; r.N = N; r.H = H; r.G = G; r.K = K;
            r.reverse = dir == 1; r.train = true; r.lengths = lengths;
            r.row = lay.row;
            // Gate gradients overwrite the cached rows in place (each value is read first), unless
            // the cache must be kept: then they go to scratch. RNN caches no rows.
            r.gates = lay.row.ld ? cache + lay.gates(l, dir) : nullptr;
            r.dgates = ws.dgates[dir] ? ws.dgates[dir] : r.gates;
            r.ld_gates = r.ld_dgates = ld_dg;
            r.c_hist = has_c ? cache + lay.c_hist(l, dir) : nullptr;
            r.y = const_cast<T*>(Y) + dir * K; r.ld_y = DK;
            r.h0 = h0_all + s_idx * NK;
            r.c0 = has_c ? c0_all + s_idx * NH : nullptr;
            r.dy = dY ? dY + dir * K : nullptr; r.ld_dy = DK;
            r.dh = ws.dh[dir];
            r.dc = has_c ? ws.dc[dir] : nullptr;
            r.bptt_clip = clip;
            b.copy_or_zero(r.dh, grad_h_n ? grad_h_n + s_idx * NK : nullptr, NK);
            if (has_c) b.copy_or_zero(r.dc, grad_c_n ? grad_c_n + s_idx * NH : nullptr, NH);
            b.prepare(r, w[s_idx], g[s_idx], lay, l, dir);
        }
        b.run(rec);

        for (i64 dir = 0; dir < D; ++dir) {
            const i64 s_idx = l * D + dir;
            const LayerWeights<T>& W = w[s_idx];
            const LayerGrads<T>& Gr = g[s_idx];
            const Recurrence<T>& r = rec[dir];
            b.copy(grad_h0 + s_idx * NK, r.dh, NK);
            if (has_c) b.copy(grad_c0 + s_idx * NH, r.dc, NH);
            b.finish(r, dir, s_idx);

            // Weight gradients as large GEMMs over all steps. dv: dL/d(gate pre-activations) in
            // the first G blocks; dgx: dL/d(W_ih x) (through the input normalization, if any).
            const T* dv = r.dgates;
            const T* dgx = b.input_grad(r, W, Gr, lay, l, dir);
            b.gemm(true, false, GH, C_l, TN, T(1), dgx, ld_dg, X, C_l, T(1), Gr.w_ih, C_l);
            const RecurrentInput<T> in = b.recurrent_input(r, Y + dir * K, DK, s_idx);
            T* dW = b.w_hh_grad(Gr, s_idx, dir);
            const T* none = nullptr;
            if (ln_hh(d)) {  // W_hh h went through the recurrent LayerNorm: its gradient is in xhat_hh
                accumulate_w_hh(b, d, dir, lengths, 0, GH, r.dgates + lay.row.xhat_hh, ld_dg, in.y, in.ld, none, 0,
                                in.h0, dW, ws.gather);
            } else {  // each band of W_hh rows: its gate-gradient block times its input (the cell table)
                for (int i = 0; i < cell.n_bands; ++i) {
                    const WeightBand band = cell.bands[i];
                    const T* alt = band.input_block >= 0 ? r.gates + band.input_block * H : none;
                    accumulate_w_hh(b, d, dir, lengths, band.row0 * H, (band.row0 + band.rows) * H,
                                    dv + band.dblock * H, ld_dg, in.y, in.ld, alt, alt ? ld_dg : 0, in.h0, dW,
                                    ws.gather);
                }
            }
            b.finish_w_hh_grad(dW, Gr, s_idx);
            b.variant_grads(r, Gr, lay, dir);
            if (Gr.b_ih) b.column_sums(dv, TN, GH, ld_dg, Gr.b_ih);
            if (Gr.b_hh)  // b_hh enters where W_hh h does: the same bands
                for (int i = 0; i < cell.n_bands; ++i) {
                    const WeightBand band = cell.bands[i];
                    b.column_sums(dv + band.dblock * H, TN, band.rows * H, ld_dg, Gr.b_hh + band.row0 * H);
                }
            b.gemm(false, false, TN, C_l, GH, T(1), dgx, ld_dg, W.w_ih, C_l, dir == 0 ? T(0) : T(1), dX, C_l);
        }
        if (l > 0) {
            if (masks) b.multiply(dX, masks + (l - 1) * TN * DK, dX, TN * DK);
            dY = dX;
        }
    }
}

}  // namespace fastrnn
