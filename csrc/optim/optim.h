// Multi-tensor optimizer updates: one call updates every parameter of a model in place.
//
// Each update follows torch.optim's single-tensor code path operation by operation (same order
// of roundings, scalars rounded to the parameter dtype), so N steps on the same gradients give
// the same parameters as torch.optim up to the last bits. Gradients are never written; weight
// decay (L2) and L1 are folded into a local copy of each gradient element.
#pragma once
#include <cstdint>

namespace fastrnn::optim {

// One parameter tensor, its gradient and its state buffers (null when the option is off).
template <class T>
struct Slot {
    T* param;
    const T* grad;
    T* state[3];
    std::int64_t size;
};

// Regularization common to every optimizer: g <- g + weight_decay * w + l1 * sign(w).
struct Reg {
    double weight_decay = 0;
    double l1 = 0;
};

// state[0] = momentum_buffer (required when momentum != 0).
struct SGD {
    double lr, momentum, dampening;
    bool nesterov;
    bool first_step;  // torch initialises the momentum buffer to the first gradient
    Reg reg;
};

// state[0] = exp_avg, state[1] = exp_avg_sq, state[2] = max_exp_avg_sq (amsgrad).
// decoupled = AdamW: w <- w * (1 - lr * weight_decay) instead of adding weight_decay * w to g.
struct Adam {
    double lr, beta1, beta2, eps;
    bool amsgrad, decoupled;
    std::int64_t step;  // 1 on the first update
    Reg reg;
};

// state[0] = square_avg, state[1] = momentum_buffer (momentum > 0), state[2] = grad_avg (centered).
struct RMSprop {
    double lr, alpha, eps, momentum;
    bool centered;
    Reg reg;
};

// state[0] = sum of squared gradients.
struct Adagrad {
    double lr, lr_decay, eps;
    std::int64_t step;  // 1 on the first update
    Reg reg;
};

// Update `count` tensors in place. The caller guarantees valid, non-overlapping buffers.
template <class T> void sgd(const Slot<T>* slots, std::int64_t count, const SGD& h);
template <class T> void adam(const Slot<T>* slots, std::int64_t count, const Adam& h);
template <class T> void rmsprop(const Slot<T>* slots, std::int64_t count, const RMSprop& h);
template <class T> void adagrad(const Slot<T>* slots, std::int64_t count, const Adagrad& h);

}  // namespace fastrnn::optim
