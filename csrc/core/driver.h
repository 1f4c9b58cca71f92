// The one recurrent driver: every cell, every ISA, forward and BPTT, all layers and directions.
#pragma once
#include <cstdint>
#include <memory>

#include "desc.h"
#include "plan.h"

namespace fastrnn {

// Training cache, in elements of the layer dtype. Per layer l: its output Y_l [T, N, D*K]
// (the h_t sequence; K = state_size(d)), the dropped input of layer l+1 [T, N, D*K] when dropout
// is on; per layer-direction: cached rows [T, N, row_layout(d).ld] (gates and the variants'
// blocks) and, for LSTM, c_t [T, N, H]; then copies of h0 [L*D, N, K] (and c0 [L*D, N, H]).
std::int64_t cache_elements(const Desc& d, bool dropout);

// Scratch (elements) a forward or backward call allocates for itself, once, for `threads`
// threads; the panel width of the active ISA is taken into account. `regularized`: the call
// gets Noise (recurrent dropout, zoneout, DropConnect), which needs a few more buffers.
std::int64_t forward_scratch_elements(const Desc& d, bool training, int threads, int nr, bool regularized = false);
std::int64_t backward_scratch_elements(const Desc& d, bool retain, int threads, int nr, bool regularized = false);

// Optional per-step records of a backward pass (null pointers: off, no cost).
struct BackwardDiagnostics {
    double* grad_h_sq;  // [L, D, T] sum over the batch and units of (dL/dh_t)^2, total gradient
    double* grad_c_sq;  // [L, D, T] the same for dL/dc_t (LSTM)
    // [L, D, T] propagation records (both or neither): over the rows valid at step t and at the
    // step BPTT processed before it (t+1 forward, t-1 reverse), the summed squares of the state
    // gradient (dL/dh and, for LSTM, the arriving dL/dc) that reached t through the recurrence,
    // and of the previous step's state gradient. Their ratio is the step Jacobian's gain.
    double* carried_sq = nullptr;
    double* prev_state_sq = nullptr;
};

template <class T>
struct BackwardOptions {
    bool retain = false;  // keep the cache intact (else it is overwritten by the gate gradients)
    T bptt_clip = T(0);   // > 0: clip dL/d(gate pre-activations) to [-bptt_clip, bptt_clip] per step
    BackwardDiagnostics diag{nullptr, nullptr, nullptr, nullptr};
    Noise<T> noise;       // the regularizer noise the forward used (the same masks)
    // bf16 compute (float32 only; the forward ran with a plan's bf16 `reduced` weights): W_hh and
    // W_hr rounded to bf16 for the recurrent products, and every GEMM outside the time loop (the
    // weight gradients, the input gradient) on bf16-rounded operands with float32 accumulation.
    bool bf16 = false;
};

// What a training forward's cache says about the gates and states, for diagnostics.
// saturation [L, D, T, S] (null: skip): per step, the fraction of valid units whose gate is
// saturated, S per cell: LSTM i, f, g, o; GRU r, z, n; RNN tanh |h| > 0.99, RNN relu h == 0
// (dead); sigmoid gates count below 0.01 or above 0.99, tanh gates |v| > 0.99; NaN for a step
// with no valid row. Returns the first non-finite value in forward order as
// {layer, direction, t, what} with what = 0 gate, 1 hidden state, 2 cell state, or {-1,...}.
struct NonFinite {
    std::int64_t layer = -1, direction = -1, t = -1, what = -1;
};
int saturation_stats(const Desc& d);  // S
template <class T>
NonFinite forward_stats(const Desc& d, const T* cache, const std::int64_t* lengths, bool dropout, double* saturation);

// x [T, N, C]; h0 [L*D, N, K] / c0 [L*D, N, H] or null (zeros); lengths [N] or null (all T);
// masks [L-1, T, N, D*K] (inter-layer dropout, already scaled) or null;
// out [T, N, D*K]; h_n [L*D, N, K], c_n [L*D, N, H]; cache null for inference; noise: the
// regularizers' masks (training) or zoneout rates (inference). `packed`: W_hh (and W_hr) already
// packed for the active ISA (a plan's, inference), else they are packed into the call's scratch;
// `in_place` (inference): the recurrent products read W_hh (and W_hr) row-major where they are,
// nothing packed (streaming steps of a few rows: csrc/core/stream.h). `low` (float32 inference, a
// plan's `reduced` for the active ISA): every product in int8 (dynamic quantization, inference) or
// bf16 (inference or training; csrc/kernels/reduced.h). Throws std::bad_alloc when its scratch
// cannot be allocated, and std::invalid_argument for `low` with another ISA's panels, DropConnect,
// or int8 with a training call. `split_rows`: inference may split the batch's rows over the
// threads (driver.cpp, batch_split_threads), which allocates per call: streams pass false.
template <class T>
void forward(const Desc& d, const LayerWeights<T>* w, const T* x, const T* h0, const T* c0,
             const std::int64_t* lengths, const T* masks, T* out, T* h_n, T* c_n, T* cache,
             const Noise<T>& noise = Noise<T>{}, const PackedWeights<T>* packed = nullptr, bool in_place = false,
             const ReducedWeights* low = nullptr, bool split_rows = true);

// forward() for inference calls that repeat with one shape (a stream's steps; no batch split):
// `kept` holds the call's setup (kernels, thread plan, the workspace and its layout, the workspace
// its own, allocated once) and is used again while the call still fits it (the same shape, noise
// object, weights arrangement, ISA, step threads and input-product choice). A call that does not
// fit runs as forward() does, on the thread's scratch; the second such call in a row makes the
// setup again (one allocation). Calls whose workspace exceeds kKeptForwardBytes always take the
// thread's scratch (a stream keeps no large buffer). `noise` must be the same object, unchanged,
// at every call (a stream's member); one `kept` serves one thread at a time.
template <class T>
struct KeptForward;
template <class T>
struct KeptForwardDeleter {
    void operator()(KeptForward<T>* p) const;
};
template <class T>
using KeptForwardPtr = std::unique_ptr<KeptForward<T>, KeptForwardDeleter<T>>;
constexpr std::int64_t kKeptForwardBytes = std::int64_t(4) << 20;
template <class T>
void forward_repeated(KeptForwardPtr<T>& kept, const Desc& d, const LayerWeights<T>* w, const T* x, const T* h0,
                      const T* c0, const std::int64_t* lengths, T* out, T* h_n, T* c_n, const Noise<T>& noise,
                      const PackedWeights<T>* packed, bool in_place, const ReducedWeights* low);

// Gradients of sum(out*grad_out) + sum(h_n*grad_h_n) + sum(c_n*grad_c_n) (null = zeros).
// Writes grad_x, grad_h0, grad_c0; accumulates (+=) into the parameter gradients g.
template <class T>
void backward(const Desc& d, const LayerWeights<T>* w, const T* x, const std::int64_t* lengths, const T* masks,
              T* cache, const T* grad_out, const T* grad_h_n, const T* grad_c_n, T* grad_x, T* grad_h0,
              T* grad_c0, const LayerGrads<T>* g, const BackwardOptions<T>& opt);

}  // namespace fastrnn
