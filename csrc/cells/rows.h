// What the driver's step kernels hand a cell: one batch row and a run of `n` hidden units of it.
// Cells only see valid rows (padded steps are handled by the step kernels) and only pointwise
// data: GEMMs are the driver's. Gate g of a unit sits at `+ g*H` in the input projection, the
// biases and the cache rows, and at `+ g*hs` in the recurrent GEMM tile.
#pragma once
#include <cstdint>

namespace fastrnn {

template <class T>
struct FwdRow {
    const T* xp;      // input projection x W_ih^T (no bias)
    const T* hp;      // recurrent projection h_{t-1} W_hh^T (no bias), gate stride hs
    std::int64_t hs;
    const T* bias;    // folded biases (b_ih + b_hh, but GRU reset_after's b_hn)
    const T* bhn;     // GRU reset_after: b_hn, which r multiplies
    const T* h_prev;  // state in
    T* h;             // state out (may not alias h_prev: other threads still read h_{t-1})
    T* c;             // LSTM cell state, in/out in place
    T* y;             // output
    T* gates;         // cache row (training; GRU reset_after=false always): may alias xp
    T* c_hist;        // LSTM: c_t cache row (training)
    T* rh;            // GRU reset_after=false: r*h_{t-1}
    std::int64_t H;   // gate stride of xp, bias, gates
};

template <class T>
struct BwdRow {
    const T* gates;   // cached post-activation gates
    T* dgates;        // out: dL/d(pre-activations); may alias gates (every value is loaded first)
    const T* c;       // LSTM c_t
    const T* c_prev;  // LSTM c_{t-1}
    const T* h_prev;  // GRU h_{t-1}
    const T* h;       // RNN h_t (its own activation output)
    const T* dh;      // total dL/dh_t
    T* dh_carry;      // out: the direct part of dL/dh_{t-1} (the recurrent GEMM adds the rest)
    T* dc;            // LSTM in: dL/dc_t from step t+1; out: dL/dc_{t-1}
    const T* d_rh;    // GRU reset_after=false, second phase: dL/d(r*h_{t-1})
    T* dc_total;      // diagnostics: the total dL/dc_t (null: not recorded)
    T clip;           // BPTT clipping bound for dL/d(pre-activations) (+inf: off)
    std::int64_t H;
};

}  // namespace fastrnn
