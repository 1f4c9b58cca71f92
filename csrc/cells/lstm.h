// LSTM, gates i, f, g, o (PyTorch order):
//   i,f,o = sigmoid(.), g = tanh(.), c' = f*c + i*g, h' = o*tanh(c').
// Cache: post-activation i, f, g, o and c_t; tanh(c_t) is recomputed in backward.
#pragma once
#include "rows.h"
#include "../simd/scalar.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

struct LSTMCell {
    static constexpr int gates = 4;
    static constexpr int cache_gates = 4;
    static constexpr int dgate_blocks = 4;
    static constexpr bool has_c = true;
    static constexpr bool two_phase = false;

    template <bool Train, class V, class T>
    FASTRNN_HD static void forward(const FwdRow<T>& r, std::int64_t n) {
        const std::int64_t H = r.H, hs = r.hs;
        for_lanes<V>(n, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            auto pre = [&](int g) { return W::load(r.xp + g * H + j) + W::load(r.hp + g * hs + j) + W::load(r.bias + g * H + j); };
            W i = vsigmoid(pre(0)), f = vsigmoid(pre(1)), g = vtanh(pre(2)), o = vsigmoid(pre(3));
            W c = fmadd(f, W::load(r.c + j), i * g);
            W h = o * vtanh(c);
            c.store(r.c + j);
            h.store(r.h + j);
            h.store(r.y + j);
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
            W dh = W::load(r.dh + j);
            W dc = fmadd(dh * o, one - tc * tc, W::load(r.dc + j));
            if (r.dc_total) dc.store(r.dc_total + j);
            W di = vclip(dc * g * i * (one - i), lim);
            W df = vclip(dc * W::load(r.c_prev + j) * f * (one - f), lim);
            W dg = vclip(dc * i * (one - g * g), lim);
            W d_o = vclip(dh * tc * o * (one - o), lim);
            di.store(r.dgates + j);
            df.store(r.dgates + H + j);
            dg.store(r.dgates + 2 * H + j);
            d_o.store(r.dgates + 3 * H + j);
            (dc * f).store(r.dc + j);
            W::zero().store(r.dh_carry + j);
        });
    }
};

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
