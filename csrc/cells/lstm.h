// LSTM, gates i, f, g, o (PyTorch order):
//   i,f,o = sigmoid(.), g = tanh(.), c' = f*c + i*g, h' = o*tanh(c').
// Cache: post-activation i, f, g, o and c_t; tanh(c_t) is recomputed in backward.
#pragma once
#include "rows.h"
#include "../simd/scalar.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

// Per-ISA namespace: each ISA's translation unit gets its own copies of every inline helper,
// so the linker can never pick an AVX2-compiled copy for the scalar path.
namespace fastrnn {
namespace FASTRNN_ISA_NS {

struct LSTMCell {
    static constexpr int gates = 4;
    static constexpr int cache_gates = 4;
    static constexpr bool has_c = true;
    static constexpr bool separate_dgh = false;
    static constexpr bool two_phase = false;
    static constexpr bool unfolded_bhn = false;

    template <bool Train, class V, class T>
    static void forward(const FwdRow<T>& r) {
        const std::int64_t H = r.H;
        for_lanes<V>(H, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            W i = vsigmoid(W::load(r.xp + j) + W::load(r.hp + j));
            W f = vsigmoid(W::load(r.xp + H + j) + W::load(r.hp + H + j));
            W g = vtanh(W::load(r.xp + 2 * H + j) + W::load(r.hp + 2 * H + j));
            W o = vsigmoid(W::load(r.xp + 3 * H + j) + W::load(r.hp + 3 * H + j));
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
    static void backward(const BwdRow<T>& r) {
        const std::int64_t H = r.H;
        for_lanes<V>(H, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            const W one = W::set1(1);
            W i = W::load(r.gates + j), f = W::load(r.gates + H + j);
            W g = W::load(r.gates + 2 * H + j), o = W::load(r.gates + 3 * H + j);
            W tc = vtanh(W::load(r.c + j));
            W dh = W::load(r.dh + j);
            W dc = fmadd(dh * o, one - tc * tc, W::load(r.dc + j));
            (dh * tc * o * (one - o)).store(r.dgx + 3 * H + j);
            (dc * g * i * (one - i)).store(r.dgx + j);
            (dc * W::load(r.c_prev + j) * f * (one - f)).store(r.dgx + H + j);
            (dc * i * (one - g * g)).store(r.dgx + 2 * H + j);
            (dc * f).store(r.dc + j);
            W::zero().store(r.dh + j);
        });
    }
};

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
