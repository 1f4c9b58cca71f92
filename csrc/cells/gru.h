// GRU, gates r, z, n (PyTorch order); h' = (1-z)*n + z*h = n + z*(h - n).
//   reset_after=true  (PyTorch, cuDNN, Keras v2): n = tanh(xp_n + b_in + r*(W_hn h + b_hn))
//     cache r, z, n, hn = W_hn h + b_hn (needed for dr); backward writes dr, dz, dn and, in
//     the fourth block, dn*r (the gradient of W_hn h, which differs from dn).
//   reset_after=false (Keras v1, ONNX default):  n = tanh(xp_n + W_hn (r*h) + b_in + b_hn)
//     two recurrent GEMMs per step: [r,z] from h, then n from r*h; cache r, z, n, r*h.
// Variants: zoneout on h (Krueger et al. 2017): h_t = h~ + d*(h_{t-1} - h~), h~ the update
// above; backward dh~ = (1-d) dh_t, dh_{t-1} += d dh_t. Recurrent dropout (Gal & Ghahramani
// 2016): the recurrent GEMMs read h_{t-1}*mask (reset_after=false: r*(h_{t-1}*mask)), while the
// z*h_{t-1} term keeps the undropped state (Keras). Reg = false compiles both out.
#pragma once
#include "forms.h"
#include "rows.h"
#include "../simd/scalar.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

template <bool ResetAfter, bool Reg>
struct GRUCell : CellTraits<cell_row_index(CellKind::GRU, ResetAfter)> {

    // reset_after=true: the whole step. reset_after=false: the second phase, where hp is
    // W_hn (r*h) (a one-gate tile) and r, z were stored by forward_rz.
    template <bool Train, class V, class T>
    FASTRNN_HD static void forward(const FwdRow<T>& row, std::int64_t cnt) {
        const std::int64_t H = row.H, hs = row.hs;
        for_lanes<V>(cnt, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            W h_prev = W::load(row.h_prev + j);
            W r, z, hn, n;
            if constexpr (ResetAfter) {
                r = vsigmoid(W::load(row.xp + j) + W::load(row.bias + j) + W::load(row.hp + j));
                z = vsigmoid(W::load(row.xp + H + j) + W::load(row.bias + H + j) + W::load(row.hp + hs + j));
                hn = W::load(row.hp + 2 * hs + j) + W::load(row.bhn + j);
                n = vtanh(fmadd(r, hn, W::load(row.xp + 2 * H + j) + W::load(row.bias + 2 * H + j)));
            } else {
                z = W::load(row.gates + H + j);
                n = vtanh(W::load(row.xp + 2 * H + j) + W::load(row.bias + 2 * H + j) + W::load(row.hp + j));
            }
            W h = fmadd(z, h_prev - n, n);
            if constexpr (Reg)
                if (row.zh) h = fmadd(W::load(row.zh + j), h_prev - h, h);
            h.store(row.h + j);
            h.store(row.y + j);
            if constexpr (Reg)
                if (row.hr) (h * W::load(row.rmask + j)).store(row.hr + j);
            if constexpr (Train) {
                n.store(row.gates + 2 * H + j);
                if constexpr (ResetAfter) {
                    r.store(row.gates + j);
                    z.store(row.gates + H + j);
                    hn.store(row.gates + 3 * H + j);
                }
            }
        });
    }

    // reset_after=false, first phase: r, z from the [r,z] GEMM (a two-gate tile), and r*h for
    // the second GEMM. r and z go to `gates` (the cache row, or the scratch row in inference).
    template <class V, class T>
    FASTRNN_HD static void forward_rz(const FwdRow<T>& row, std::int64_t cnt) {
        const std::int64_t H = row.H, hs = row.hs;
        for_lanes<V>(cnt, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            W r = vsigmoid(W::load(row.xp + j) + W::load(row.bias + j) + W::load(row.hp + j));
            W z = vsigmoid(W::load(row.xp + H + j) + W::load(row.bias + H + j) + W::load(row.hp + hs + j));
            r.store(row.gates + j);
            z.store(row.gates + H + j);
            W h_in = W::load(row.h_prev + j);
            if constexpr (Reg)
                if (row.rmask) h_in = h_in * W::load(row.rmask + j);
            (r * h_in).store(row.rh + j);
        });
    }

    // reset_after=true: the whole step. reset_after=false: the first phase (dz, dn; dr needs
    // dL/d(r*h) = dn W_hn over all units, which the second phase gets from the second GEMM).
    template <class V, class T>
    FASTRNN_HD static void backward(const BwdRow<T>& row, std::int64_t cnt) {
        const std::int64_t H = row.H;
        for_lanes<V>(cnt, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            const W one = W::set1(1), lim = W::set1(row.clip);
            W z = W::load(row.gates + H + j), n = W::load(row.gates + 2 * H + j);
            W dh_total = W::load(row.dh + j), dh = dh_total, h_prev = W::load(row.h_prev + j);
            if constexpr (Reg)
                if (row.zh) dh = dh_total * (one - W::load(row.zh + j));
            W dn = vclip(dh * (one - z) * (one - n * n), lim);
            W dz = vclip(dh * (h_prev - n) * z * (one - z), lim);
            if constexpr (ResetAfter) {
                W r = W::load(row.gates + j), hn = W::load(row.gates + 3 * H + j);
                W dr = vclip(dn * hn * r * (one - r), lim);
                dr.store(row.dgates + j);
                (dn * r).store(row.dgates + 3 * H + j);
            }
            dz.store(row.dgates + H + j);
            dn.store(row.dgates + 2 * H + j);
            if (Reg && row.zh)
                fmadd(dh_total, W::load(row.zh + j), dh * z).store(row.dh_carry + j);
            else
                (dh * z).store(row.dh_carry + j);
        });
    }

    // reset_after=false, second phase: d_rh = dn W_hn is known.
    template <class V, class T>
    FASTRNN_HD static void backward_r(const BwdRow<T>& row, std::int64_t cnt) {
        for_lanes<V>(cnt, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            const W one = W::set1(1), lim = W::set1(row.clip);
            W r = W::load(row.gates + j), d_rh = W::load(row.d_rh + j);
            W h_in = W::load(row.h_prev + j), dr_h = r;  // d(r*h_in)/dh_{t-1} = r*mask
            if (Reg && row.rmask) {
                const W m = W::load(row.rmask + j);
                h_in = h_in * m;
                dr_h = r * m;
            }
            vclip(d_rh * h_in * r * (one - r), lim).store(row.dgates + j);
            fmadd(d_rh, dr_h, W::load(row.dh_carry + j)).store(row.dh_carry + j);
        });
    }
};

template <>
struct CellForms<GRUCell<true, false>::row> {
    template <class M>
    static void make(M& m) {
        m.template plain<GRUCell<true, false>, GRUCell<true, true>>();
        m.template layer_norm<GRUCell<true, true>>();
    }
};
template <>
struct CellForms<GRUCell<false, false>::row> {
    template <class M>
    static void make(M& m) { m.template plain<GRUCell<false, false>, GRUCell<false, true>>(); }
};

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
