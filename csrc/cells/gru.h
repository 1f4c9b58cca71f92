// GRU, gates r, z, n (PyTorch order); h' = (1-z)*n + z*h = n + z*(h - n).
//   reset_after=true  (PyTorch, cuDNN, Keras v2): n = tanh(xp_n + r*(W_hn h + b_hn))
//     cache r, z, n, hn = W_hn h + b_hn (needed for dr).
//   reset_after=false (Keras v1, ONNX default):  n = tanh(xp_n + W_hn (r*h) + b_hn)
//     two recurrent GEMMs per step: [r,z] from h, then n from r*h; cache r, z, n, r*h.
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

template <bool ResetAfter>
struct GRUCell {
    static constexpr int gates = 3;
    static constexpr int cache_gates = 4;
    static constexpr bool has_c = false;
    static constexpr bool separate_dgh = ResetAfter;  // d(W_hn h) = dn_pre * r differs from dn_pre
    static constexpr bool two_phase = !ResetAfter;
    static constexpr bool unfolded_bhn = ResetAfter;  // b_hn sits inside r*(.)

    // reset_after=true: the whole step; reset_after=false: the second phase (hp holds W_hn (r*h)
    // in its n block, r and z were cached by forward_rz).
    template <bool Train, class V, class T>
    static void forward(const FwdRow<T>& row) {
        const std::int64_t H = row.H;
        for_lanes<V>(H, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            W h_prev = W::load(row.h + j);
            W r, z, hn, n;
            if constexpr (ResetAfter) {
                r = vsigmoid(W::load(row.xp + j) + W::load(row.hp + j));
                z = vsigmoid(W::load(row.xp + H + j) + W::load(row.hp + H + j));
                hn = W::load(row.hp + 2 * H + j) + W::load(row.bhn + j);
                n = vtanh(fmadd(r, hn, W::load(row.xp + 2 * H + j)));
            } else {
                r = W::load(row.gates + j);
                z = W::load(row.gates + H + j);
                n = vtanh(W::load(row.xp + 2 * H + j) + W::load(row.hp + 2 * H + j));
            }
            W h = fmadd(z, h_prev - n, n);
            h.store(row.h + j);
            h.store(row.y + j);
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

    // reset_after=false, first phase: r, z from the [r,z] GEMM, and r*h for the second GEMM.
    // r and z go to `gates` (the cache row in training, a scratch row in inference).
    template <class V, class T>
    static void forward_rz(const FwdRow<T>& row) {
        const std::int64_t H = row.H;
        for_lanes<V>(H, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            W r = vsigmoid(W::load(row.xp + j) + W::load(row.hp + j));
            W z = vsigmoid(W::load(row.xp + H + j) + W::load(row.hp + H + j));
            r.store(row.gates + j);
            z.store(row.gates + H + j);
            (r * W::load(row.h + j)).store(row.rh + j);
        });
    }

    // reset_after=true: the whole step. reset_after=false: the first phase (dz, dn; d_rh is not
    // known yet); backward_r finishes it.
    template <class V, class T>
    static void backward(const BwdRow<T>& row) {
        const std::int64_t H = row.H;
        for_lanes<V>(H, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            const W one = W::set1(1);
            W z = W::load(row.gates + H + j), n = W::load(row.gates + 2 * H + j);
            W dh = W::load(row.dh + j), h_prev = W::load(row.h_prev + j);
            W dn_pre = dh * (one - z) * (one - n * n);
            (dh * (h_prev - n) * z * (one - z)).store(row.dgx + H + j);
            dn_pre.store(row.dgx + 2 * H + j);
            (dh * z).store(row.dh + j);
            if constexpr (ResetAfter) {
                W r = W::load(row.gates + j), hn = W::load(row.gates + 3 * H + j);
                W dr_pre = dn_pre * hn * r * (one - r);
                dr_pre.store(row.dgx + j);
                dr_pre.store(row.dgh + j);
                W::load(row.dgx + H + j).store(row.dgh + H + j);
                (dn_pre * r).store(row.dgh + 2 * H + j);
            }
        });
    }

    // reset_after=false, second phase: d_rh = dn_pre W_hn is known.
    template <class V, class T>
    static void backward_r(const BwdRow<T>& row) {
        const std::int64_t H = row.H;
        for_lanes<V>(H, [&](auto v, std::int64_t j) {
            using W = decltype(v);
            const W one = W::set1(1);
            W r = W::load(row.gates + j), d_rh = W::load(row.d_rh + j);
            (d_rh * W::load(row.h_prev + j) * r * (one - r)).store(row.dgx + j);
            fmadd(d_rh, r, W::load(row.dh + j)).store(row.dh + j);
        });
    }
};

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
