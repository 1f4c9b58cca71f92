// LayerNorm LSTM and LayerNorm GRU: the Haste formulation (LMNT's haste library, issue #1) of
// layer normalization (Ba, Kiros & Hinton 2016, "Layer normalization") in recurrent cells.
//
// LN_gamma,beta(v) = gamma * (v - mean(v)) / sqrt(var(v) + eps) + beta over the features of one
// row (one sequence, one step); var is the biased variance, eps = 1e-5 (torch's LayerNorm).
// The input and the recurrent projection are normalized separately, each over all G*H gate
// pre-activations of the row, with a gain and no bias (the gate biases play that role):
//
//   LSTM  v = LN_g_ih(W_ih x_t) + LN_g_hh(W_hh h_{t-1}) + b_ih + b_hh     (gates i, f, g, o)
//         c_t = f*c_{t-1} + i*g,   h_t = o * tanh(LN_{g_c,b_c}(c_t))       (c_t over its H units)
//   GRU   vx = LN_g_ih(W_ih x_t) + b_ih,   vh = LN_g_hh(W_hh h_{t-1}) + b_hh   (gates r, z, n)
//         r = sigmoid(vx_r + vh_r), z = sigmoid(vx_z + vh_z), n = tanh(vx_n + r*vh_n)
//         h_t = (1-z)*n + z*h_{t-1}
//
// Zoneout and recurrent dropout combine as for the plain cells (lstm.h, gru.h); zoneout on c
// applies to the carried state, LN and tanh see the candidate c~ = f*c_{t-1} + i*g.
//
// LayerNorm needs statistics over all units of a row, which the driver's unit partition splits
// among threads. Each unit block's owner writes partial statistics of its block; after a barrier
// every thread combines the blocks in block order, so results do not depend on the thread count.
// Forward, per step: (1) recurrent GEMM of own units + block statistics of W_hh h; (2) combine,
// normalize, gates, c~ + block statistics of c~; (3) combine, h_t. Backward, per step: (A)
// dL/dh_t, the LN(c) output's gradient + block sums for the LN(c) backward; (B) gate gradients
// + block sums for the recurrent LN backward; (C) dL/d(W_hh h_{t-1}) for the next step's GEMM.
// The GRU has no LN(c): two phases each way, and its pointwise math is GRUCell<true>'s.
//
// LN backward (x^ the normalized input, dy the gradient of LN's output, n features):
//   dx = rstd * (dy*g - mean(dy*g) - x^ * mean(dy*g * x^)),  dg = sum dy*x^,  db = sum dy.
#pragma once
#include "forms.h"
#include "rows.h"
#include "../simd/scalar.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

constexpr double kLayerNormEps = 1e-5;

// One row's data for the LayerNorm LSTM's own phases (pointers offset to the run's first unit).
template <class T>
struct LNRow {
    const T* o = nullptr;       // output gate (cache row block 3, or the scratch row in inference)
    T* chat = nullptr;          // in: the candidate c~; out (training): its normalized value
    const T* w = nullptr;       // LN(c) gain and bias
    const T* b = nullptr;
    T mean = T(0), rstd = T(0); // forward: statistics of c~; backward: rstd of c~
    T m1 = T(0), m2 = T(0);     // backward: mean(dy*g) and mean(dy*g * x^) of the LN(c) backward
    const T* h_prev = nullptr;  // zoneout on h
    const T* zh = nullptr;
    const T* rmask = nullptr;
    T* h = nullptr;             // forward outputs
    T* y = nullptr;
    T* hr = nullptr;
    const T* dh = nullptr;      // backward: total dL/dh_t
    T* d_o = nullptr;           // out: dL/d(o pre-activation)
    T* dh_carry = nullptr;      // out: zoneout's direct part of dL/dh_{t-1}
    T* dchat = nullptr;         // dL/d(c^) * g_c, from phase A to phase B
    T* gw = nullptr;            // gradients of the LN(c) gain and bias (added)
    T* gb = nullptr;
    T clip = T(0);
};

struct LNLSTMCell : CellTraits<cell_row_index(CellKind::LSTM, true)> {

    // Phase 2 (of 3): gates and the candidate c~ (to `ctil`), with the normalized, scaled
    // recurrent projection already in `hp`. In inference only o is kept (in `gates`, block 3).
    template <bool Train, class V, class T>
    static void forward_gates(const FwdRow<T>& r, std::int64_t n) {
        const std::int64_t H = r.H, hs = r.hs;
        for_lanes<V>(n, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            auto pre = [&](int g) { return W::load(r.xp + g * H + j) + W::load(r.hp + g * hs + j) + W::load(r.bias + g * H + j); };
            W c_prev = W::load(r.c + j);
            W i = vsigmoid(pre(0)), f = vsigmoid(pre(1)), g = vtanh(pre(2)), o = vsigmoid(pre(3));
            W c = fmadd(f, c_prev, i * g);
            c.store(r.ctil + j);
            if (r.zc) c = fmadd(W::load(r.zc + j), c_prev - c, c);
            c.store(r.c + j);
            o.store(r.gates + 3 * H + j);
            if constexpr (Train) {
                i.store(r.gates + j);
                f.store(r.gates + H + j);
                g.store(r.gates + 2 * H + j);
                c.store(r.c_hist + j);
            }
        });
    }

    // Phase 3: h = o * tanh(LN(c~)).
    template <bool Train, class V, class T>
    static void forward_out(const LNRow<T>& r, std::int64_t n) {
        for_lanes<V>(n, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            W chat = (W::load(r.chat + j) - W::set1(r.mean)) * W::set1(r.rstd);
            if constexpr (Train) chat.store(r.chat + j);
            W h = W::load(r.o + j) * vtanh(fmadd(W::load(r.w + j), chat, W::load(r.b + j)));
            if (r.zh) h = fmadd(W::load(r.zh + j), W::load(r.h_prev + j) - h, h);
            h.store(r.h + j);
            h.store(r.y + j);
            if (r.hr) (h * W::load(r.rmask + j)).store(r.hr + j);
        });
    }

    // Phase A: from the total dL/dh_t to d(o), the LN(c) parameter gradients and dL/dc^ * g_c.
    template <class V, class T>
    static void backward_out(const LNRow<T>& r, std::int64_t n) {
        for_lanes<V>(n, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            const W one = W::set1(1);
            W o = W::load(r.o + j), chat = W::load(r.chat + j), w = W::load(r.w + j);
            W tl = vtanh(fmadd(w, chat, W::load(r.b + j)));
            W dh_total = W::load(r.dh + j), dh = dh_total;
            if (r.zh) {
                const W z = W::load(r.zh + j);
                dh = dh_total * (one - z);
                (dh_total * z).store(r.dh_carry + j);
            } else {
                W::zero().store(r.dh_carry + j);
            }
            W dl = dh * o * (one - tl * tl);  // dL/d LN(c) output
            vclip(dh * tl * o * (one - o), W::set1(r.clip)).store(r.d_o + j);
            (W::load(r.gb + j) + dl).store(r.gb + j);
            fmadd(dl, chat, W::load(r.gw + j)).store(r.gw + j);
            (dl * w).store(r.dchat + j);
        });
    }

    // Phase B: dL/dc~ from the LN(c) backward and the carried dL/dc_t, then di, df, dg.
    template <class V, class T>
    static void backward_gates(const BwdRow<T>& r, const LNRow<T>& q, std::int64_t n) {
        const std::int64_t H = r.H;
        for_lanes<V>(n, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            const W one = W::set1(1), lim = W::set1(r.clip);
            W i = W::load(r.gates + j), f = W::load(r.gates + H + j), g = W::load(r.gates + 2 * H + j);
            W dln = W::set1(q.rstd) * (W::load(q.dchat + j) - W::set1(q.m1) - W::load(q.chat + j) * W::set1(q.m2));
            W dc_next = W::load(r.dc + j), dc_in = dc_next;
            if (r.zc) dc_in = dc_next * (one - W::load(r.zc + j));
            W dc = dln + dc_in;
            if (r.dc_total) dc.store(r.dc_total + j);
            W di = vclip(dc * g * i * (one - i), lim);
            W df = vclip(dc * W::load(r.c_prev + j) * f * (one - f), lim);
            W dg = vclip(dc * i * (one - g * g), lim);
            di.store(r.dgates + j);
            df.store(r.dgates + H + j);
            dg.store(r.dgates + 2 * H + j);
            W dc_prev = dc * f;
            if (r.zc) dc_prev = fmadd(W::load(r.zc + j), dc_next, dc_prev);
            dc_prev.store(r.dc + j);
        });
    }
};

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
