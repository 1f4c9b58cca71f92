// What the driver's step kernels hand a cell: one batch row and a run of `n` hidden units of it.
// Cells only see valid rows (padded steps are handled by the step kernels) and only pointwise
// data: GEMMs are the driver's. Gate g of a unit sits at `+ g*H` in the input projection, the
// biases and the cache rows, and at `+ g*hs` in the recurrent GEMM tile. Every pointer is
// already offset to the first unit of the run; optional ones are null when off.
#pragma once
#include <cstdint>

#include "table.h"

namespace fastrnn {

template <class T>
struct FwdRow {
    const T* xp = nullptr;      // input projection x W_ih^T (no bias)
    const T* hp = nullptr;      // recurrent projection h_{t-1} W_hh^T (no bias), gate stride hs
    std::int64_t hs = 0;
    const T* bias = nullptr;    // folded biases (b_ih + b_hh, but GRU reset_after's b_hn)
    const T* bhn = nullptr;     // GRU reset_after: b_hn, which r multiplies
    const T* h_prev = nullptr;  // state in
    T* h = nullptr;             // state out (may not alias h_prev: other threads still read h_{t-1});
                                // LSTMP: m_t, the projection's input
    T* c = nullptr;             // LSTM cell state, in/out in place
    T* y = nullptr;             // output
    T* gates = nullptr;         // cache row (training; GRU reset_after=false always): may alias xp
    T* c_hist = nullptr;        // LSTM: c_t cache row (training)
    T* rh = nullptr;            // GRU reset_after=false: r*h_{t-1}
    std::int64_t H = 0;         // gate stride of xp, bias, gates
    // Variants.
    const T* peep = nullptr;    // LSTM peepholes p_i, p_f, p_o (gate stride H)
    const T* zh = nullptr;      // zoneout on h: 1 keeps h_{t-1} (or the rate, inference)
    const T* zc = nullptr;      // zoneout on c (LSTM)
    T* ctil = nullptr;          // LSTM: the candidate cell before zoneout / LayerNorm (cache row)
    const T* rmask = nullptr;   // recurrent dropout mask on h (GRU reset_after=false: in r*h)
    T* hr = nullptr;            // out: h_t * rmask, the next step's recurrent GEMM input
    Activation act = Activation::Relu;  // Li-GRU: the candidate's nonlinearity
    const T* cmask = nullptr;   // Li-GRU: dropout mask of the candidate
};

template <class T>
struct BwdRow {
    const T* gates = nullptr;   // cached post-activation gates
    T* dgates = nullptr;        // out: dL/d(pre-activations); may alias gates (every value is loaded first)
    const T* c = nullptr;       // LSTM c_t (the candidate before zoneout, the argument of tanh)
    const T* c_prev = nullptr;  // LSTM c_{t-1}
    const T* h_prev = nullptr;  // GRU h_{t-1}
    const T* h = nullptr;       // RNN h_t (its own activation output)
    const T* dh = nullptr;      // total dL/dh_t
    T* dh_carry = nullptr;      // out: the direct part of dL/dh_{t-1} (the recurrent GEMM adds the rest)
    T* dc = nullptr;            // LSTM in: dL/dc_t from step t+1; out: dL/dc_{t-1}
    const T* d_rh = nullptr;    // GRU reset_after=false, second phase: dL/d(r*h_{t-1})
    T* dc_total = nullptr;      // diagnostics: the total dL/dc_t (null: not recorded)
    T clip = T(0);              // BPTT clipping bound for dL/d(pre-activations) (+inf: off)
    std::int64_t H = 0;
    // Variants.
    const T* peep = nullptr;
    const T* zh = nullptr;
    const T* zc = nullptr;
    const T* rmask = nullptr;
    const T* cmask = nullptr;   // Li-GRU: dropout mask of the candidate
};

}  // namespace fastrnn
