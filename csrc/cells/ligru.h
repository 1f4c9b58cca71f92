// Li-GRU (Ravanelli, Brakel, Omologo & Bengio 2018, "Light gated recurrent units for speech
// recognition") and SLi-GRU (Moumen & Parcollet 2023, "Stabilising and accelerating light gated
// recurrent units for automatic speech recognition"), as SpeechBrain 1.1 defines them
// (speechbrain.nnet.RNN.LiGRU / SLiGRU). Gates a (the candidate's) and z, in that order; no reset
// gate:
//   z = sigmoid(W_z x + U_z h + b_z),  c = act(W_a x + U_a h + b_a),  h' = z*h + (1-z)*m*c,
// act in relu, tanh, sin, leaky_relu (slope 0.01), m the per-sequence dropout mask of the
// candidate (SpeechBrain's recurrent dropout, drawn once per sequence; none in inference). W x is
// normalized by the driver before the recurrence (batch norm over all valid rows, or LayerNorm),
// whose shift is the bias b; SLi-GRU also normalizes U h with a LayerNorm (the driver's
// LayerNorm phases, csrc/kernels/steps_layernorm.h). The cell below is the same for both.
// Cache: c = act(a), z and act'(a). Backward (dh the total dL/dh'):
//   dc = (1-z) m dh,  da = dc act'(a),  dz = dh (h - m c) z (1-z),  dh_{t-1} = z dh (+ U's part).
// Reg = false compiles the mask out (inference, and training without dropout).
#pragma once
#include <cmath>

#include "forms.h"
#include "rows.h"
#include "../simd/scalar.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

// std::sin / std::cos lane by lane: no ISA here has a vector sine, and SpeechBrain's `sin` is rare
// enough that libm's accuracy matters more than its speed.
template <class W, class F>
FASTRNN_HD inline W per_lane(W a, F f) {
    using T = typename W::value_type;
    T v[W::width];
    a.store(v);
    for (int i = 0; i < W::width; ++i) v[i] = f(v[i]);
    return W::load(v);
}

// The candidate's activation and its derivative (from the argument a and the value c = act(a)).
template <Activation A>
struct CandidateAct;
template <>
struct CandidateAct<Activation::Relu> {
    template <class W> FASTRNN_HD static W f(W a) { return vrelu(a); }
    template <class W> FASTRNN_HD static W df(W a, W) { return step(a); }  // 0 at a = 0, as torch
};
template <>
struct CandidateAct<Activation::Tanh> {
    template <class W> FASTRNN_HD static W f(W a) { return vtanh(a); }
    template <class W> FASTRNN_HD static W df(W, W c) { return W::set1(1) - c * c; }
};
template <>
struct CandidateAct<Activation::Sin> {
    template <class W> FASTRNN_HD static W f(W a) {
        using T = typename W::value_type;
        return per_lane(a, [](T v) { return T(std::sin(v)); });
    }
    template <class W> FASTRNN_HD static W df(W a, W) {
        using T = typename W::value_type;
        return per_lane(a, [](T v) { return T(std::cos(v)); });
    }
};
template <>
struct CandidateAct<Activation::LeakyRelu> {
    template <class W> FASTRNN_HD static W f(W a) { return vmax(a, a * W::set1(typename W::value_type(kLeakyReluSlope))); }
    template <class W> FASTRNN_HD static W df(W a, W) {  // slope at a = 0, as torch
        using T = typename W::value_type;
        return fmadd(step(a), W::set1(T(1 - kLeakyReluSlope)), W::set1(T(kLeakyReluSlope)));
    }
};

// Calls f(CandidateAct<A>{}) for the activation chosen at run time (once per row, outside the
// lane loop, so each loop is compiled for its activation).
template <class F>
FASTRNN_HD inline void with_activation(Activation act, F&& f) {
    switch (act) {
        case Activation::Tanh: return f(CandidateAct<Activation::Tanh>{});
        case Activation::Sin: return f(CandidateAct<Activation::Sin>{});
        case Activation::LeakyRelu: return f(CandidateAct<Activation::LeakyRelu>{});
        case Activation::Relu: break;
    }
    f(CandidateAct<Activation::Relu>{});
}

template <CellKind Kind, bool Reg>
struct LiGRUCell : CellTraits<cell_row_index(Kind, true)> {
    template <bool Train, class V, class T>
    FASTRNN_HD static void forward(const FwdRow<T>& row, std::int64_t cnt) {
        const std::int64_t H = row.H, hs = row.hs;
        with_activation(row.act, [&](auto act) {
            using Act = decltype(act);
            for_lanes<V>(cnt, [&](auto v, std::int64_t j) {
                using W = decltype(v);
                const W a = W::load(row.xp + j) + W::load(row.bias + j) + W::load(row.hp + j);
                const W z = vsigmoid(W::load(row.xp + H + j) + W::load(row.bias + H + j) + W::load(row.hp + hs + j));
                const W c = Act::f(a);
                W cm = c;
                if constexpr (Reg)
                    if (row.cmask) cm = c * W::load(row.cmask + j);
                const W h = fmadd(z, W::load(row.h_prev + j) - cm, cm);
                h.store(row.h + j);
                h.store(row.y + j);
                if constexpr (Train) {
                    c.store(row.gates + j);
                    z.store(row.gates + H + j);
                    Act::df(a, c).store(row.gates + 2 * H + j);
                }
            });
        });
    }

    template <class V, class T>
    FASTRNN_HD static void backward(const BwdRow<T>& row, std::int64_t cnt) {
        const std::int64_t H = row.H;
        for_lanes<V>(cnt, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            const W one = W::set1(1), lim = W::set1(row.clip);
            const W c = W::load(row.gates + j), z = W::load(row.gates + H + j), dact = W::load(row.gates + 2 * H + j);
            const W dh = W::load(row.dh + j);
            W m = one;
            if constexpr (Reg)
                if (row.cmask) m = W::load(row.cmask + j);
            const W da = vclip(dh * (one - z) * m * dact, lim);
            const W dz = vclip(dh * (W::load(row.h_prev + j) - m * c) * z * (one - z), lim);
            da.store(row.dgates + j);
            dz.store(row.dgates + H + j);
            (dh * z).store(row.dh_carry + j);
        });
    }
};

template <>
struct CellForms<cell_row_index(CellKind::LIGRU, true)> {
    template <class M>
    static void make(M& m) { m.template plain<LiGRUCell<CellKind::LIGRU, false>, LiGRUCell<CellKind::LIGRU, true>>(); }
};
template <>
struct CellForms<cell_row_index(CellKind::SLIGRU, true)> {
    template <class M>
    static void make(M& m) { m.template layer_norm<LiGRUCell<CellKind::SLIGRU, true>>(); }
};

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
