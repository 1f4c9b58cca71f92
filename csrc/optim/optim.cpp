// Element loops of the optimizers. Every option that changes the arithmetic is a template
// parameter, so each loop body is straight-line code that the compiler vectorises (sqrt and
// division included: the extension is built with -fno-math-errno).
#include "optim.h"

#include <cmath>
#include <type_traits>

namespace fastrnn::optim {
namespace {

using i64 = std::int64_t;

// Calls f(flag_0, flag_1, ...) with each runtime bool turned into std::true_type/false_type,
// so that f can instantiate a kernel whose options are compile-time constants.
template <class F>
void with_flags(F&& f) {
    f();
}
template <class F, class... Bools>
void with_flags(F&& f, bool flag, Bools... rest) {
    if (flag)
        with_flags([&](auto... c) { f(std::true_type{}, c...); }, rest...);
    else
        with_flags([&](auto... c) { f(std::false_type{}, c...); }, rest...);
}

// -1, 0 or +1 (0 for NaN: the update of a NaN weight is NaN anyway). Branch-free for vectorising.
template <class T>
inline T sign(T w) {
    return T(w > T(0)) - T(w < T(0));
}

// The gradient the update sees: g + weight_decay * w (torch's grad.add(param, alpha=wd)) + l1 * sign(w).
// A term whose coefficient is 0 is left out, as torch does, so an infinite weight adds no NaN.
template <bool WD, bool L1, class T>
inline T regularized(T g, T w, T wd, T l1) {
    if constexpr (WD) g = g + wd * w;
    if constexpr (L1) g = g + l1 * sign(w);
    return g;
}

// torch.lerp(self, end, weight) as its CPU kernel computes it.
template <class T>
inline T lerp(T self, T end, T weight) {
    return std::abs(weight) < T(0.5) ? self + weight * (end - self) : end - (end - self) * (T(1) - weight);
}

template <class T, bool WD, bool L1, bool MOMENTUM, bool FIRST, bool NESTEROV>
void sgd_tensor(const Slot<T>& s, const SGD& h) {
    const T neg_lr = T(-h.lr), momentum = T(h.momentum), keep = T(1 - h.dampening);
    const T wd = T(h.reg.weight_decay), l1 = T(h.reg.l1);
    T* __restrict p = s.param;
    const T* __restrict gr = s.grad;
    T* __restrict buf = s.state[0];
    const i64 n = s.size;
    for (i64 i = 0; i < n; ++i) {
        T d = regularized<WD, L1>(gr[i], p[i], wd, l1);
        if constexpr (MOMENTUM) {
            T b = d;  // torch initialises the buffer to the first gradient
            if constexpr (!FIRST) b = buf[i] * momentum + keep * d;
            buf[i] = b;
            d = NESTEROV ? d + momentum * b : b;
        }
        p[i] = p[i] + neg_lr * d;
    }
}

template <class T, bool WD, bool L1, bool AMSGRAD>
void adam_tensor(const Slot<T>& s, const Adam& h) {
    // Scalars computed in double exactly as torch's Python code does, then rounded to T.
    const double bias_correction1 = 1 - std::pow(h.beta1, double(h.step));
    const double bias_correction2 = 1 - std::pow(h.beta2, double(h.step));
    const T neg_step_size = T(-(h.lr / bias_correction1));
    const T bc2_sqrt = T(std::pow(bias_correction2, 0.5));
    // AdamW's decay factor; exactly 1 (w * 1 == w) when off, so the loop has no branch for it.
    const T decay = h.decoupled && h.reg.weight_decay != 0 ? T(1 - h.lr * h.reg.weight_decay) : T(1);
    const T w1 = T(1 - h.beta1), beta2 = T(h.beta2), w2 = T(1 - h.beta2), eps = T(h.eps);
    const T wd = T(h.reg.weight_decay), l1 = T(h.reg.l1);
    T* __restrict p = s.param;
    const T* __restrict gr = s.grad;
    T* __restrict m = s.state[0];
    T* __restrict v = s.state[1];
    T* __restrict vmax = s.state[2];
    const i64 n = s.size;
    for (i64 i = 0; i < n; ++i) {
        const T w = p[i] * decay;
        const T g = regularized<WD, L1>(gr[i], w, wd, l1);
        const T mi = lerp(m[i], g, w1);
        const T vi = v[i] * beta2 + w2 * g * g;
        m[i] = mi;
        v[i] = vi;
        T d = vi;
        if constexpr (AMSGRAD) {
            d = ((vmax[i] < vi) | (vi != vi)) ? vi : vmax[i];  // torch.maximum: NaN wins
            vmax[i] = d;
        }
        p[i] = w + neg_step_size * (mi / (std::sqrt(d) / bc2_sqrt + eps));
    }
}

template <class T, bool WD, bool L1, bool CENTERED, bool MOMENTUM>
void rmsprop_tensor(const Slot<T>& s, const RMSprop& h) {
    const T alpha = T(h.alpha), w = T(1 - h.alpha), eps = T(h.eps), momentum = T(h.momentum), neg_lr = T(-h.lr);
    const T wd = T(h.reg.weight_decay), l1 = T(h.reg.l1);
    T* __restrict p = s.param;
    const T* __restrict gr = s.grad;
    T* __restrict sq = s.state[0];
    T* __restrict buf = s.state[1];
    T* __restrict gavg = s.state[2];
    const i64 n = s.size;
    for (i64 i = 0; i < n; ++i) {
        const T g = regularized<WD, L1>(gr[i], p[i], wd, l1);
        const T sqi = sq[i] * alpha + w * g * g;
        sq[i] = sqi;
        T avg;
        if constexpr (CENTERED) {
            const T ga = lerp(gavg[i], g, w);
            gavg[i] = ga;
            avg = std::sqrt(sqi + T(-1) * ga * ga);
        } else {
            avg = std::sqrt(sqi);
        }
        avg = avg + eps;
        if constexpr (MOMENTUM) {
            const T b = buf[i] * momentum + g / avg;
            buf[i] = b;
            p[i] = p[i] + neg_lr * b;
        } else {
            p[i] = p[i] + neg_lr * (g / avg);
        }
    }
}

template <class T, bool WD, bool L1>
void adagrad_tensor(const Slot<T>& s, const Adagrad& h) {
    const T neg_clr = T(-(h.lr / (1 + double(h.step - 1) * h.lr_decay))), eps = T(h.eps);
    const T wd = T(h.reg.weight_decay), l1 = T(h.reg.l1);
    T* __restrict p = s.param;
    const T* __restrict gr = s.grad;
    T* __restrict sum = s.state[0];
    const i64 n = s.size;
    for (i64 i = 0; i < n; ++i) {
        const T g = regularized<WD, L1>(gr[i], p[i], wd, l1);
        const T si = sum[i] + T(1) * g * g;
        sum[i] = si;
        p[i] = p[i] + neg_clr * (g / (std::sqrt(si) + eps));
    }
}

}  // namespace

template <class T>
void sgd(const Slot<T>* slots, i64 count, const SGD& h) {
    with_flags(
        [&](auto wd, auto l1, auto mom, auto first, auto nesterov) {
            for (i64 t = 0; t < count; ++t)
                sgd_tensor<T, wd.value, l1.value, mom.value, first.value, nesterov.value>(slots[t], h);
        },
        h.reg.weight_decay != 0, h.reg.l1 != 0, h.momentum != 0, h.first_step, h.nesterov);
}

template <class T>
void adam(const Slot<T>* slots, i64 count, const Adam& h) {
    // AdamW's weight decay is the `decay` factor, not a gradient term.
    with_flags(
        [&](auto wd, auto l1, auto ams) {
            for (i64 t = 0; t < count; ++t) adam_tensor<T, wd.value, l1.value, ams.value>(slots[t], h);
        },
        !h.decoupled && h.reg.weight_decay != 0, h.reg.l1 != 0, h.amsgrad);
}

template <class T>
void rmsprop(const Slot<T>* slots, i64 count, const RMSprop& h) {
    with_flags(
        [&](auto wd, auto l1, auto centered, auto mom) {
            for (i64 t = 0; t < count; ++t)
                rmsprop_tensor<T, wd.value, l1.value, centered.value, mom.value>(slots[t], h);
        },
        h.reg.weight_decay != 0, h.reg.l1 != 0, h.centered, h.momentum > 0);
}

template <class T>
void adagrad(const Slot<T>* slots, i64 count, const Adagrad& h) {
    with_flags(
        [&](auto wd, auto l1) {
            for (i64 t = 0; t < count; ++t) adagrad_tensor<T, wd.value, l1.value>(slots[t], h);
        },
        h.reg.weight_decay != 0, h.reg.l1 != 0);
}

#define FASTRNN_OPTIM_INSTANTIATE(T)                               \
    template void sgd<T>(const Slot<T>*, i64, const SGD&);         \
    template void adam<T>(const Slot<T>*, i64, const Adam&);       \
    template void rmsprop<T>(const Slot<T>*, i64, const RMSprop&); \
    template void adagrad<T>(const Slot<T>*, i64, const Adagrad&);
FASTRNN_OPTIM_INSTANTIATE(float)
FASTRNN_OPTIM_INSTANTIATE(double)
#undef FASTRNN_OPTIM_INSTANTIATE

}  // namespace fastrnn::optim
