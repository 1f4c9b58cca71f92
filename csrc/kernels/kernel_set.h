// The kernel set of one ISA: every row of the cell table in every form its cell header registers
// (csrc/cells/forms.h), the packing of W_hh for the microkernel, the hoisted normalizations.
// Included last by each ISA's file (csrc/kernels/<isa>.cpp) inside its namespace and target pragma.
#pragma once
#include <utility>

#include "steps_layernorm.h"
#include "steps_lstmp.h"
#include "steps_plain.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

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

// LayerNorm of the recurrent projection: a statistics phase, then the normalization and the
// cell; the LSTM adds a third phase for LN(c_t) (Haste's LayerNormLSTM).
template <class Cell, class GV, class CV, class T>
CellKernels<T> make_ln_kernels() {
    CellKernels<T> k = no_kernels<T>();
    k.fwd_train[0] = &ln_stats_step<Cell, GV, CV, true, T>;
    k.fwd_infer[0] = &ln_stats_step<Cell, GV, CV, false, T>;
    k.fwd_train[1] = &ln_gates_step<Cell, GV, CV, true, T>;
    k.fwd_infer[1] = &ln_gates_step<Cell, GV, CV, false, T>;
    k.bwd_final = &backward_final<Cell, true, GV, T>;
    if constexpr (Cell::has_c) {
        k.fwd_phases = k.bwd_phases = 3;
        k.fwd_train[2] = &ln_out_step<GV, CV, true, T>;
        k.fwd_infer[2] = &ln_out_step<GV, CV, false, T>;
        k.bwd[0] = &ln_lstm_bwd_out<GV, CV, T>;
        k.bwd[1] = &ln_lstm_bwd_gates<GV, CV, T>;
        k.bwd[2] = &ln_rec_bwd<Cell, GV, CV, T>;
    } else {
        k.fwd_phases = k.bwd_phases = 2;
        k.bwd[0] = &backward_step<Cell, GV, CV, true, T>;
        k.bwd[1] = &ln_rec_bwd<Cell, GV, CV, T>;
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

// Builds the forms a cell header names in its CellForms<Row>::make (csrc/cells/forms.h).
template <class GV, class CV, class T>
struct FormMaker {
    CellKernelForms<T>& forms;
    template <class Plain, class Regularized>
    void plain() {
        forms.plain = make_cell_kernels<Plain, GV, CV, T>();
        forms.reg = make_cell_kernels<Regularized, GV, CV, T>();
    }
    template <class Cell>
    void peephole() { forms.peephole = make_cell_kernels<Cell, GV, CV, T>(); }
    template <bool Peephole>
    void projection() { (Peephole ? forms.proj_peephole : forms.proj) = make_lstmp_kernels<Peephole, GV, CV, T>(); }
    template <class Cell>
    void layer_norm() { forms.layer_norm = make_ln_kernels<Cell, GV, CV, T>(); }
};

template <class GV, class CV, class T, int... Rows>
void make_cells(KernelSet<T>& ks, std::integer_sequence<int, Rows...>) {
    for (auto& forms : ks.cells) forms.plain = forms.reg = forms.peephole = forms.proj = forms.proj_peephole =
        forms.layer_norm = no_kernels<T>();
    (..., [&] {
        FormMaker<GV, CV, T> maker{ks.cells[Rows]};
        CellForms<Rows>::make(maker);
    }());
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
    ks.bn_rows = &bn_rows<CV, T>;
    ks.bn_rows_backward = &bn_rows_backward<CV, T>;
    make_cells<GV, CV, T>(ks, std::make_integer_sequence<int, kCellRows>{});
    ks.activation = &activation<CV, T>;
    ks.read_sum = &read_sum<GV>;
    ks.rows_gemm = &rows_gemm<GV>;
    ks.input_gemm = &input_gemm<GV>;
    return ks;
}

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
