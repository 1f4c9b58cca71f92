// Description of a recurrent layer stack, the weights it uses and the per-step data handed to
// the ISA kernels. Plain structs: the C ABI mirrors them.
#pragma once
#include <cstdint>

namespace fastrnn {

enum class CellKind : int { RNN_TANH = 0, RNN_RELU = 1, LSTM = 2, GRU = 3 };

struct Desc {
    CellKind cell = CellKind::LSTM;
    bool reset_after = true;  // GRU only
    bool bias = true;
    std::int64_t T = 0, N = 0, C = 0, H = 0, L = 1, D = 1;
};

int cell_gates(const Desc& d);        // G: row blocks of W_ih / W_hh
int cell_cache_gates(const Desc& d);  // H-wide blocks kept per step in the training cache
bool cell_has_c(const Desc& d);

// Weights and gradients of one layer-direction (torch layout: W_ih [G*H, C_k], W_hh [G*H, H]).
template <class T>
struct LayerWeights {
    const T* w_ih;
    const T* w_hh;
    const T* b_ih;  // null when bias=false
    const T* b_hh;
};
template <class T>
struct LayerGrads {
    T* w_ih;
    T* w_hh;
    T* b_ih;  // null when bias=false
    T* b_hh;
};

// One forward time step over all N rows; row n is valid when t < lengths[n].
template <class T>
struct StepFwd {
    std::int64_t N, H, t;
    const std::int64_t* lengths;  // null: all rows valid
    const T* xp;  std::int64_t ld_xp;
    const T* hp;  std::int64_t ld_hp;
    const T* bhn;
    T* h;         // [N, H] state
    T* c;         // [N, H] state (LSTM)
    T* y;         std::int64_t ld_y;
    T* gates;     std::int64_t ld_gates;   // cache rows (training) or scratch rows
    T* c_hist;    // [N, H] slice of the LSTM c cache (training)
    T* rh;        std::int64_t ld_rh;      // GRU reset_after=false
};

// One backward time step over all N rows.
template <class T>
struct StepBwd {
    std::int64_t N, H, t, prev_t, T_len;
    const std::int64_t* lengths;
    const T* gates;  std::int64_t ld_gates;
    const T* c_hist;                      // LSTM c cache base [T, N, H]
    const T* c0;                          // [N, H]
    const T* y;      std::int64_t ld_y;   // this direction's outputs base [T, N, ld_y] (h_t)
    const T* h0;                          // [N, H]
    const T* dy;     std::int64_t ld_dy;  // grad of outputs at step t (null: none)
    const T* d_rh;                        // [N, H]
    T* dh;                                // [N, H] carry
    T* dc;                                // [N, H] carry (LSTM)
    T* dgx;          std::int64_t ld_dg;
    T* dgh;                               // [N, ld_dg] (GRU reset_after)
};

// The pointwise kernels of one cell for one ISA and dtype.
template <class T>
struct CellKernels {
    void (*fwd_train)(const StepFwd<T>&);
    void (*fwd_infer)(const StepFwd<T>&);
    void (*fwd_rz)(const StepFwd<T>&);   // GRU reset_after=false first phase
    void (*bwd)(const StepBwd<T>&);
    void (*bwd_r)(const StepBwd<T>&);    // GRU reset_after=false second phase
};

// All cells of one ISA for one dtype.
template <class T>
struct KernelSet {
    CellKernels<T> rnn_tanh, rnn_relu, lstm, gru, gru_v1;  // gru_v1: reset_after=false
};

}  // namespace fastrnn
