// Per-step row loops around the cell policies, written once and included by each ISA's file
// (inside that ISA's namespace and target pragma). Padded rows (t >= lengths[n]) are handled
// here, so cells only ever see valid rows.
#pragma once
#include <cstring>
#include "../core/desc.h"
#include "../cells/rnn.h"
#include "../cells/lstm.h"
#include "../cells/gru.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

// Per-ISA namespace: each ISA's translation unit gets its own copies of every inline helper,
// so the linker can never pick an AVX2-compiled copy for the scalar path.
namespace fastrnn {
namespace FASTRNN_ISA_NS {

template <class T>
inline bool row_valid(const std::int64_t* lengths, std::int64_t n, std::int64_t t) {
    return lengths == nullptr || t < lengths[n];
}

template <class T>
inline void zero_row(T* p, std::int64_t n) {
    std::memset(static_cast<void*>(p), 0, sizeof(T) * static_cast<std::size_t>(n));
}

template <class T>
FwdRow<T> fwd_row(const StepFwd<T>& s, std::int64_t n) {
    const std::int64_t H = s.H;
    return FwdRow<T>{s.xp + n * s.ld_xp, s.hp + n * s.ld_hp, s.bhn, s.h + n * H,
                     s.c ? s.c + n * H : nullptr, s.y + n * s.ld_y,
                     s.gates ? s.gates + n * s.ld_gates : nullptr,
                     s.c_hist ? s.c_hist + n * H : nullptr,
                     s.rh ? s.rh + n * s.ld_rh : nullptr, H};
}

template <class Cell, class V, bool Train, class T>
void fwd_step(const StepFwd<T>& s) {
    for (std::int64_t n = 0; n < s.N; ++n) {
        if (!row_valid<T>(s.lengths, n, s.t)) {  // state untouched, output zero
            zero_row(s.y + n * s.ld_y, s.H);
            if constexpr (Train) {
                if (Cell::cache_gates) zero_row(s.gates + n * s.ld_gates, Cell::cache_gates * s.H);
                if (Cell::has_c) std::memcpy(s.c_hist + n * s.H, s.c + n * s.H, sizeof(T) * s.H);
            }
            continue;
        }
        Cell::template forward<Train, V>(fwd_row(s, n));
    }
}

template <class Cell, class V, class T>
void fwd_rz_step(const StepFwd<T>& s) {
    for (std::int64_t n = 0; n < s.N; ++n) {
        if (!row_valid<T>(s.lengths, n, s.t)) {
            zero_row(s.rh + n * s.ld_rh, s.H);
            continue;
        }
        Cell::template forward_rz<V>(fwd_row(s, n));
    }
}

template <class Cell, class T>
BwdRow<T> bwd_row(const StepBwd<T>& s, std::int64_t n) {
    const std::int64_t H = s.H, N = s.N;
    // h_{t-1} / c_{t-1}: the previous step of this sequence, or the initial state when step t
    // is the sequence's first (t = 0 forward, t = len-1 reverse).
    const bool prev_in_seq = s.prev_t >= 0 && s.prev_t < s.T_len && row_valid<T>(s.lengths, n, s.prev_t);
    const T* h_prev = prev_in_seq ? s.y + (s.prev_t * N + n) * s.ld_y : s.h0 + n * H;
    const T* c_prev = nullptr;
    if (Cell::has_c) c_prev = prev_in_seq ? s.c_hist + (s.prev_t * N + n) * H : s.c0 + n * H;
    return BwdRow<T>{s.gates + n * s.ld_gates,
                     Cell::has_c ? s.c_hist + (s.t * N + n) * H : nullptr,
                     c_prev,
                     h_prev,
                     s.y + (s.t * N + n) * s.ld_y,
                     s.d_rh ? s.d_rh + n * H : nullptr,
                     s.dh + n * H,
                     s.dc ? s.dc + n * H : nullptr,
                     s.dgx + n * s.ld_dg,
                     s.dgh ? s.dgh + n * s.ld_dg : nullptr,
                     H};
}

template <class Cell, class V, class T>
void bwd_step(const StepBwd<T>& s) {
    const std::int64_t H = s.H, GH = Cell::gates * H;
    for (std::int64_t n = 0; n < s.N; ++n) {
        if (!row_valid<T>(s.lengths, n, s.t)) {  // no gradient enters; carries pass through
            zero_row(s.dgx + n * s.ld_dg, GH);
            if (Cell::separate_dgh) zero_row(s.dgh + n * s.ld_dg, GH);
            continue;
        }
        if (s.dy) {
            T* dh = s.dh + n * H;
            const T* dy = s.dy + n * s.ld_dy;
            for (std::int64_t j = 0; j < H; ++j) dh[j] += dy[j];
        }
        Cell::template backward<V>(bwd_row<Cell>(s, n));
    }
}

template <class Cell, class V, class T>
void bwd_r_step(const StepBwd<T>& s) {
    for (std::int64_t n = 0; n < s.N; ++n) {
        if (!row_valid<T>(s.lengths, n, s.t)) continue;  // dgx row already zeroed by bwd_step
        Cell::template backward_r<V>(bwd_row<Cell>(s, n));
    }
}

template <class Cell, class V, class T>
CellKernels<T> make_cell_kernels() {
    CellKernels<T> k{};
    k.fwd_train = &fwd_step<Cell, V, true, T>;
    k.fwd_infer = &fwd_step<Cell, V, false, T>;
    k.bwd = &bwd_step<Cell, V, T>;
    if constexpr (Cell::two_phase) {
        k.fwd_rz = &fwd_rz_step<Cell, V, T>;
        k.bwd_r = &bwd_r_step<Cell, V, T>;
    }
    return k;
}

template <class V, class T>
KernelSet<T> make_kernel_set() {
    return KernelSet<T>{make_cell_kernels<RNNCell<false>, V, T>(), make_cell_kernels<RNNCell<true>, V, T>(),
                        make_cell_kernels<LSTMCell, V, T>(), make_cell_kernels<GRUCell<true>, V, T>(),
                        make_cell_kernels<GRUCell<false>, V, T>()};
}

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
