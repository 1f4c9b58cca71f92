// What the driver hands a cell for one batch row of one time step. Cells only see valid rows
// (padded steps are handled by the driver), and only pointwise data: GEMMs are the driver's.
#pragma once
#include <cstdint>

namespace fastrnn {

template <class T>
struct FwdRow {
    const T* xp;    // input projection x W_ih^T + folded biases, [G*H]
    const T* hp;    // recurrent projection h_prev W_hh^T (no bias), [G*H]
    const T* bhn;   // GRU reset_after: b_hn, kept out of the fold because r multiplies it
    T* h;           // state in (h_prev) / out (h); updated in place
    T* c;           // LSTM cell state in/out
    T* y;           // output row (h)
    T* gates;       // training cache row [cache_gates*H] (null in inference)
    T* c_hist;      // LSTM training cache row of c_t (null in inference)
    T* rh;          // GRU reset_after=False: r*h_prev, the input of the second recurrent GEMM
    std::int64_t H;
};

template <class T>
struct BwdRow {
    const T* gates;   // cached post-activation gates
    const T* c;       // LSTM c_t
    const T* c_prev;  // LSTM c_{t-1}
    const T* h_prev;  // GRU h_{t-1}
    const T* h;       // RNN h_t (its own activation output)
    const T* d_rh;    // GRU reset_after=False: dL/d(r*h_prev) from the second GEMM
    T* dh;            // in: total dL/dh_t; out: the direct part of dL/dh_{t-1} (GEMM adds the rest)
    T* dc;            // LSTM in: dL/dc_t from step t+1; out: dL/dc_{t-1}
    T* dgx;           // out: dL/d(input pre-activations) [G*H]
    T* dgh;           // out: dL/d(recurrent pre-activations) [G*H] when they differ (GRU)
    std::int64_t H;
};

}  // namespace fastrnn
