// Element loops of the optimizers. Every loop body is straight-line arithmetic on local values
// (option flags are loop-invariant), so the compiler vectorises it; sqrt vectorises because the
// extension is built with -fno-math-errno.
#include "optim.h"

#include <cmath>

namespace fastrnn::optim {
namespace {

using i64 = std::int64_t;

// torch.sign: -1, 0 or +1; NaN stays NaN.
template <class T>
inline T sign(T w) {
    return w > T(0) ? T(1) : (w < T(0) ? T(-1) : w);
}

// The gradient the update sees: g + weight_decay * w (torch's grad.add(param, alpha=wd)) + l1 * sign(w).
// Terms whose coefficient is 0 are skipped, as torch does, so an infinite weight adds no NaN.
template <class T>
struct Regularizer {
    T wd, l1;
    bool has_wd, has_l1;
    Regularizer(const Reg& r, bool use_wd)
        : wd(T(r.weight_decay)), l1(T(r.l1)), has_wd(use_wd && r.weight_decay != 0), has_l1(r.l1 != 0) {}
    inline T operator()(T g, T w) const {
        if (has_wd) g = g + wd * w;
        if (has_l1) g = g + l1 * sign(w);
        return g;
    }
};

// torch.lerp(self, end, weight) as computed by its CPU kernel.
template <class T>
inline T lerp(T self, T end, T weight) {
    return std::abs(weight) < T(0.5) ? self + weight * (end - self) : end - (end - self) * (T(1) - weight);
}

}  // namespace

template <class T>
void sgd(const Slot<T>* slots, i64 count, const SGD& h) {
    const Regularizer<T> reg(h.reg, true);
    const T neg_lr = T(-h.lr), momentum = T(h.momentum), keep = T(1 - h.dampening);
    const bool use_momentum = h.momentum != 0;
    for (i64 t = 0; t < count; ++t) {
        T* __restrict p = slots[t].param;
        const T* __restrict gr = slots[t].grad;
        T* __restrict buf = slots[t].state[0];
        const i64 n = slots[t].size;
        if (!use_momentum) {
            for (i64 i = 0; i < n; ++i) p[i] = p[i] + neg_lr * reg(gr[i], p[i]);
        } else if (h.first_step) {
            for (i64 i = 0; i < n; ++i) {
                const T g = reg(gr[i], p[i]);
                buf[i] = g;
                p[i] = p[i] + neg_lr * (h.nesterov ? g + momentum * g : g);
            }
        } else {
            for (i64 i = 0; i < n; ++i) {
                const T g = reg(gr[i], p[i]);
                const T b = buf[i] * momentum + keep * g;
                buf[i] = b;
                p[i] = p[i] + neg_lr * (h.nesterov ? g + momentum * b : b);
            }
        }
    }
}

template <class T>
void adam(const Slot<T>* slots, i64 count, const Adam& h) {
    const Regularizer<T> reg(h.reg, !h.decoupled);
    const double step = double(h.step);
    // Scalars computed in double exactly as torch's Python code does, then rounded to T.
    const double bias_correction1 = 1 - std::pow(h.beta1, step);
    const double bias_correction2 = 1 - std::pow(h.beta2, step);
    const T neg_step_size = T(-(h.lr / bias_correction1));
    const T bc2_sqrt = T(std::pow(bias_correction2, 0.5));
    const T decay = T(1 - h.lr * h.reg.weight_decay);
    const bool decay_weights = h.decoupled && h.reg.weight_decay != 0;
    const T w1 = T(1 - h.beta1), beta2 = T(h.beta2), w2 = T(1 - h.beta2), eps = T(h.eps);
    for (i64 t = 0; t < count; ++t) {
        T* __restrict p = slots[t].param;
        const T* __restrict gr = slots[t].grad;
        T* __restrict m = slots[t].state[0];
        T* __restrict v = slots[t].state[1];
        T* __restrict vmax = slots[t].state[2];
        const i64 n = slots[t].size;
        for (i64 i = 0; i < n; ++i) {
            T w = p[i];
            if (decay_weights) w = w * decay;
            const T g = reg(gr[i], w);
            const T mi = lerp(m[i], g, w1);
            const T vi = v[i] * beta2 + w2 * g * g;
            m[i] = mi;
            v[i] = vi;
            T s = vi;
            if (h.amsgrad) {
                s = (vmax[i] < vi || vi != vi) ? vi : vmax[i];  // torch.maximum: NaN wins
                vmax[i] = s;
            }
            const T denom = std::sqrt(s) / bc2_sqrt + eps;
            p[i] = w + neg_step_size * (mi / denom);
        }
    }
}

template <class T>
void rmsprop(const Slot<T>* slots, i64 count, const RMSprop& h) {
    const Regularizer<T> reg(h.reg, true);
    const T alpha = T(h.alpha), w = T(1 - h.alpha), eps = T(h.eps), momentum = T(h.momentum), neg_lr = T(-h.lr);
    const bool use_momentum = h.momentum > 0;
    for (i64 t = 0; t < count; ++t) {
        T* __restrict p = slots[t].param;
        const T* __restrict gr = slots[t].grad;
        T* __restrict sq = slots[t].state[0];
        T* __restrict buf = slots[t].state[1];
        T* __restrict gavg = slots[t].state[2];
        const i64 n = slots[t].size;
        for (i64 i = 0; i < n; ++i) {
            const T g = reg(gr[i], p[i]);
            const T s = sq[i] * alpha + w * g * g;
            sq[i] = s;
            T avg;
            if (h.centered) {
                const T ga = lerp(gavg[i], g, w);
                gavg[i] = ga;
                avg = std::sqrt(s + T(-1) * ga * ga);
            } else {
                avg = std::sqrt(s);
            }
            avg = avg + eps;
            if (use_momentum) {
                const T b = buf[i] * momentum + g / avg;
                buf[i] = b;
                p[i] = p[i] + neg_lr * b;
            } else {
                p[i] = p[i] + neg_lr * (g / avg);
            }
        }
    }
}

template <class T>
void adagrad(const Slot<T>* slots, i64 count, const Adagrad& h) {
    const Regularizer<T> reg(h.reg, true);
    const T neg_clr = T(-(h.lr / (1 + double(h.step - 1) * h.lr_decay))), eps = T(h.eps);
    for (i64 t = 0; t < count; ++t) {
        T* __restrict p = slots[t].param;
        const T* __restrict gr = slots[t].grad;
        T* __restrict sum = slots[t].state[0];
        const i64 n = slots[t].size;
        for (i64 i = 0; i < n; ++i) {
            const T g = reg(gr[i], p[i]);
            const T s = sum[i] + T(1) * g * g;
            sum[i] = s;
            p[i] = p[i] + neg_clr * (g / (std::sqrt(s) + eps));
        }
    }
}

#define FASTRNN_OPTIM_INSTANTIATE(T)                                  \
    template void sgd<T>(const Slot<T>*, i64, const SGD&);            \
    template void adam<T>(const Slot<T>*, i64, const Adam&);          \
    template void rmsprop<T>(const Slot<T>*, i64, const RMSprop&);    \
    template void adagrad<T>(const Slot<T>*, i64, const Adagrad&);
FASTRNN_OPTIM_INSTANTIATE(float)
FASTRNN_OPTIM_INSTANTIATE(double)
#undef FASTRNN_OPTIM_INSTANTIATE

}  // namespace fastrnn::optim
