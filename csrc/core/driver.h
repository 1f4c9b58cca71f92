// The one recurrent driver: every cell, every ISA, forward and BPTT, all layers and directions.
#pragma once
#include <cstdint>
#include "desc.h"

namespace fastrnn {

// Training cache, in elements of the layer dtype. Per layer l: its output Y_l [T, N, D*H]
// (the h_t sequence), the dropped input of layer l+1 [T, N, D*H] when dropout is on; per
// layer-direction: cached gates [T, N, cache_gates*H] and, for LSTM, c_t [T, N, H]; then
// copies of h0 (and c0) [L*D, N, H].
std::int64_t cache_elements(const Desc& d, bool dropout);

// Scratch sizes (elements) one call allocates for itself, once.
std::int64_t forward_scratch_elements(const Desc& d, bool training);
std::int64_t backward_scratch_elements(const Desc& d);

// x [T, N, C]; h0/c0 [L*D, N, H] or null (zeros); lengths [N] or null (all T);
// masks [L-1, T, N, D*H] (inter-layer dropout, already scaled) or null;
// out [T, N, D*H]; h_n/c_n [L*D, N, H]; cache null for inference.
template <class T>
void forward(const Desc& d, const LayerWeights<T>* w, const T* x, const T* h0, const T* c0,
             const std::int64_t* lengths, const T* masks, T* out, T* h_n, T* c_n, T* cache);

// Gradients of sum(out*grad_out) + sum(h_n*grad_h_n) + sum(c_n*grad_c_n) (null = zeros).
// Writes grad_x, grad_h0, grad_c0; accumulates (+=) into the parameter gradients g.
template <class T>
void backward(const Desc& d, const LayerWeights<T>* w, const T* x, const std::int64_t* lengths, const T* masks,
              const T* cache, const T* grad_out, const T* grad_h_n, const T* grad_c_n, T* grad_x, T* grad_h0,
              T* grad_c0, const LayerGrads<T>* g);

}  // namespace fastrnn
