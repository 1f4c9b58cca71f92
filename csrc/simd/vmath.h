// float32 activations written once for every vector type W (Avx2F, Avx512F, ...): W provides
// set1, +, *, /, fmadd and a NaN-preserving vclip; each ISA header maps vtanh/vsigmoid here.
//
// tanh: [13/6] rational function on [-7.99881, 7.99881] (Eigen's ptanh_float coefficients;
// beyond the clamp tanh rounds to +-1 within the bound): max abs error ~3e-7, one division, no
// exp. sigmoid(x) = (1 + tanh(x/2)) / 2: max abs error ~1.5e-7 (relative error grows in the far
// negative tail, where sigmoid is below 1e-6). Contract, tested on every ISA in
// tests/test_simd.py: max abs error <= 2e-6 over the whole range, NaN propagates.
#pragma once

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

template <class W>
inline W tanh_rational(W x) {
    x = vclip(x, W::set1(7.99881172180175781f));
    const W x2 = x * x;
    W p = fmadd(W::set1(-2.76076847742355e-16f), x2, W::set1(2.00018790482477e-13f));
    p = fmadd(p, x2, W::set1(-8.60467152213735e-11f));
    p = fmadd(p, x2, W::set1(5.12229709037114e-08f));
    p = fmadd(p, x2, W::set1(1.48572235717979e-05f));
    p = fmadd(p, x2, W::set1(6.37261928875436e-04f));
    p = fmadd(p, x2, W::set1(4.89352455891786e-03f));
    W q = fmadd(W::set1(1.19825839466702e-06f), x2, W::set1(1.18534705686654e-04f));
    q = fmadd(q, x2, W::set1(2.26843463243900e-03f));
    q = fmadd(q, x2, W::set1(4.89352518554385e-03f));
    return (p * x) / q;
}

template <class W>
inline W sigmoid_from_tanh(W x) {
    const W half = W::set1(0.5f);
    return fmadd(half, tanh_rational(half * x), half);
}

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
