// Vanilla RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu.
#pragma once
#include "forms.h"
#include "rows.h"
#include "../simd/scalar.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

// Per-ISA namespace: each ISA's translation unit gets its own copies of every inline helper,
// so the linker can never pick an AVX2-compiled copy for the scalar path.
namespace fastrnn {
namespace FASTRNN_ISA_NS {

template <bool Relu, bool Reg>  // Reg: recurrent dropout compiled in
struct RNNCell : CellTraits<cell_row_index(Relu ? CellKind::RNN_RELU : CellKind::RNN_TANH, true)> {

    template <bool Train, class V, class T>
    FASTRNN_HD static void forward(const FwdRow<T>& r, std::int64_t n) {
        for_lanes<V>(n, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            W pre = W::load(r.xp + j) + W::load(r.hp + j) + W::load(r.bias + j);
            W h = Relu ? vrelu(pre) : vtanh(pre);
            h.store(r.h + j);
            h.store(r.y + j);
            if constexpr (Reg)
                if (r.hr) (h * W::load(r.rmask + j)).store(r.hr + j);  // recurrent dropout
        });
    }

    template <class V, class T>
    FASTRNN_HD static void backward(const BwdRow<T>& r, std::int64_t n) {
        for_lanes<V>(n, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            const W lim = W::set1(r.clip);
            W h = W::load(r.h + j), dh = W::load(r.dh + j);
            W d = Relu ? dh * step(h) : dh * (W::set1(1) - h * h);
            vclip(d, lim).store(r.dgates + j);
            W::zero().store(r.dh_carry + j);
        });
    }
};

template <>
struct CellForms<RNNCell<false, false>::row> {
    template <class M>
    static void make(M& m) { m.template plain<RNNCell<false, false>, RNNCell<false, true>>(); }
};
template <>
struct CellForms<RNNCell<true, false>::row> {
    template <class M>
    static void make(M& m) { m.template plain<RNNCell<true, false>, RNNCell<true, true>>(); }
};

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
