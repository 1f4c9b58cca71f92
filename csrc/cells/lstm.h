// LSTM, gates i, f, g, o (PyTorch order):
//   i,f,o = sigmoid(.), g = tanh(.), c' = f*c + i*g, h' = o*tanh(c').
// Cache: post-activation i, f, g, o and c_t; tanh(c_t) is recomputed in backward.
//
// Variants handled here (the driver and the step phases of csrc/kernels/ do the rest):
// - Peepholes (Gers & Schmidhuber 2000, "Recurrent nets that time and count"; ONNX LSTM's P):
//     i = sigmoid(a_i + p_i*c_{t-1}), f = sigmoid(a_f + p_f*c_{t-1}), o = sigmoid(a_o + p_o*c_t).
//   Backward: dc_t gains d_o*p_o, dc_{t-1} gains di*p_i + df*p_f (d* = pre-activation
//   gradients); dp = sum over steps and rows of d* times the c it multiplied (driver, after BPTT).
// - Zoneout (Krueger et al. 2017, "Zoneout: regularizing RNNs by randomly preserving hidden
//   activations", eq. 6-7), masks d (1 = keep the previous value):
//     c~ = f*c_{t-1} + i*g,  c_t = c~ + d_c*(c_{t-1} - c~),  h_t = h~ + d_h*(h_{t-1} - h~),
//     h~ = o*tanh(c~): the output uses the candidate c~ (the paper's equations).
//   Backward: dh~ = (1-d_h) dh_t and dh_{t-1} += d_h dh_t; dc~ = dh~ o (1-tanh^2 c~) +
//   (1-d_c) dc_t and dc_{t-1} = dc~ f + d_c dc_t.
// - Recurrent dropout (Gal & Ghahramani 2016): the cell also writes h_t * mask, the next
//   recurrent GEMM's input; the state itself is not dropped.
// - Projection (LSTMP): the step kernels point `h` at m_t and project it in a second phase.
// Reg = false compiles the regularizers out (the plain cells' kernels); Reg = true reads the
// optional zoneout / recurrent dropout pointers of the row (null: off).
#pragma once
#include "forms.h"
#include "rows.h"
#include "../simd/scalar.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

template <bool Peep, bool Reg>
struct LSTMCell : CellTraits<cell_row_index(CellKind::LSTM, true)> {

    template <bool Train, class V, class T>
    FASTRNN_HD static void forward(const FwdRow<T>& r, std::int64_t n) {
        const std::int64_t H = r.H, hs = r.hs;
        for_lanes<V>(n, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            auto pre = [&](int g) { return W::load(r.xp + g * H + j) + W::load(r.hp + g * hs + j) + W::load(r.bias + g * H + j); };
            W c_prev = W::load(r.c + j);
            W ai = pre(0), af = pre(1), ao = pre(3);
            if constexpr (Peep) {
                ai = fmadd(W::load(r.peep + j), c_prev, ai);
                af = fmadd(W::load(r.peep + H + j), c_prev, af);
            }
            W i = vsigmoid(ai), f = vsigmoid(af), g = vtanh(pre(2));
            W c = fmadd(f, c_prev, i * g);
            if constexpr (Peep) ao = fmadd(W::load(r.peep + 2 * H + j), c, ao);
            W o = vsigmoid(ao);
            W h = o * vtanh(c);
            if constexpr (Reg) {
                if (r.zh) h = fmadd(W::load(r.zh + j), W::load(r.h_prev + j) - h, h);
                if (Train && r.ctil) c.store(r.ctil + j);
                if (r.zc) c = fmadd(W::load(r.zc + j), c_prev - c, c);
            }
            c.store(r.c + j);
            h.store(r.h + j);
            h.store(r.y + j);
            if constexpr (Reg)
                if (r.hr) (h * W::load(r.rmask + j)).store(r.hr + j);
            if constexpr (Train) {
                i.store(r.gates + j);
                f.store(r.gates + H + j);
                g.store(r.gates + 2 * H + j);
                o.store(r.gates + 3 * H + j);
                c.store(r.c_hist + j);
            }
        });
    }

    template <class V, class T>
    FASTRNN_HD static void backward(const BwdRow<T>& r, std::int64_t n) {
        const std::int64_t H = r.H;
        for_lanes<V>(n, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            const W one = W::set1(1), lim = W::set1(r.clip);
            W i = W::load(r.gates + j), f = W::load(r.gates + H + j);
            W g = W::load(r.gates + 2 * H + j), o = W::load(r.gates + 3 * H + j);
            W tc = vtanh(W::load(r.c + j));
            W dh_total = W::load(r.dh + j), dh = dh_total;
            W dc_next = W::load(r.dc + j), dc_in = dc_next;
            if constexpr (Reg) {
                if (r.zh) dh = dh_total * (one - W::load(r.zh + j));
                if (r.zc) dc_in = dc_next * (one - W::load(r.zc + j));
            }
            W d_o = vclip(dh * tc * o * (one - o), lim);
            W dc = fmadd(dh * o, one - tc * tc, dc_in);
            if constexpr (Peep) dc = fmadd(d_o, W::load(r.peep + 2 * H + j), dc);
            if (r.dc_total) dc.store(r.dc_total + j);
            W di = vclip(dc * g * i * (one - i), lim);
            W df = vclip(dc * W::load(r.c_prev + j) * f * (one - f), lim);
            W dg = vclip(dc * i * (one - g * g), lim);
            di.store(r.dgates + j);
            df.store(r.dgates + H + j);
            dg.store(r.dgates + 2 * H + j);
            d_o.store(r.dgates + 3 * H + j);
            W dc_prev = dc * f;
            if constexpr (Reg)
                if (r.zc) dc_prev = fmadd(W::load(r.zc + j), dc_next, dc_prev);
            if constexpr (Peep) {
                dc_prev = fmadd(di, W::load(r.peep + j), dc_prev);
                dc_prev = fmadd(df, W::load(r.peep + H + j), dc_prev);
            }
            dc_prev.store(r.dc + j);
            if (Reg && r.zh)
                (dh_total * W::load(r.zh + j)).store(r.dh_carry + j);
            else
                W::zero().store(r.dh_carry + j);
        });
    }
};

struct LNLSTMCell;  // layernorm.h

template <>
struct CellForms<LSTMCell<false, false>::row> {
    template <class M>
    static void make(M& m) {
        m.template plain<LSTMCell<false, false>, LSTMCell<false, true>>();
        m.template peephole<LSTMCell<true, true>>();
        m.template projection<false>();
        m.template projection<true>();
        m.template layer_norm<LNLSTMCell>();
    }
};

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
