// Description of a recurrent layer stack, the weights it uses and the per-step contexts handed
// to the ISA kernels. Plain structs: the C ABI mirrors them.
#pragma once
#include <cstdint>

namespace fastrnn {

// Most panels one thread's GEMM tile holds (forward GRU: 2 unit blocks x 3 gates).
constexpr int kMaxTilePanels = 6;

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

// One layer-direction's recurrence, as the per-step kernels see it. Unit blocks are `nr` hidden
// units wide (the microkernel's panel width); a thread owns a contiguous range of them and, for
// every step, computes the recurrent GEMM of all gates of its units followed by the cell's
// pointwise function on them, so one barrier per step (per phase) suffices.
//
// Layouts (row n of step t): pre-activations/gates rows `gates + (t*N + n)*ld_gates`, gate g of
// unit j at `g*H + j`. In training the input projection is written straight into the cache rows
// and the cell overwrites it with the post-activation gates; in inference the rows are scratch.
template <class T>
struct Recurrence {
    std::int64_t steps, N, H, G;   // steps = T
    bool reverse;                  // processes t = T-1 .. 0
    bool train;                    // keep the cache (post-activation gates, c_t)
    const std::int64_t* lengths;   // null: every sequence has length T
    const T* packed;               // W_hh packed by pack_forward (forward) or pack_backward
    const T* bias;                 // [G*H] folded biases (b_ih + b_hh, but GRU reset_after's b_hn)
    const T* bhn;                  // [H] GRU reset_after: b_hn, inside r*(.)
    T* gates;  std::int64_t ld_gates;
    T* hbuf;                       // [2, N, H] state ping-pong: step s reads hbuf[s&1], writes hbuf[~s&1]
    T* c;                          // [N, H] LSTM cell state, updated in place by each unit's owner
    T* c_hist;                     // [T, N, H] LSTM c_t cache (training)
    T* rh;     std::int64_t ld_rh; // GRU reset_after=false: r*h_{t-1}, the input of the second GEMM
    T* y;      std::int64_t ld_y;  // outputs [T, N, ld_y], already offset to this direction

    // Backward only.
    const T* h0;                   // [N, H] initial state (GRU backward reads h_{t-1})
    const T* c0;                   // [N, H]
    const T* dy;   std::int64_t ld_dy;  // gradient arriving at the outputs (null: none)
    T* dgates; std::int64_t ld_dgates;  // dL/d(pre-activations); may alias `gates` (in place)
    T* dh;                         // [N, H] carried gradient of the state (direct part)
    T* dc;                         // [N, H] LSTM carried gradient of c
    T* d_rh;                       // [N, H] GRU reset_after=false: dL/d(r*h)
    T bptt_clip;                   // > 0: clip dL/d(pre-activations) to [-clip, clip] (Graves 2013)
};

// Per-thread state of one parallel region: a GEMM tile and optional diagnostics accumulators.
template <class T>
struct ThreadCtx {
    T* tile;              // [N, tile_cols] recurrent GEMM results of the current unit group
    double* grad_h_sq;    // [T] sum of squares of the total dL/dh_t over own units (null: off)
    double* grad_c_sq;    // [T] same for dL/dc_t (LSTM)
    // Propagation records (null: off): over the rows valid at step t and at the step BPTT did
    // before it, the squared norm of the state gradient (dL/dh, and the arriving dL/dc for LSTM)
    // that reached step t through the recurrence, and of that previous step's state gradient.
    double* carried_sq;     // [T]
    double* prev_state_sq;  // [T]
    double* rows;           // [3 N] per-row scratch for them
    T* dc_total;          // [nr] scratch for the LSTM dL/dc_t of one row block (diagnostics)
};

// The per-step kernels of one cell for one ISA and dtype. A step has one or two phases; the
// driver runs phase p of step s on every thread's unit range, then a barrier, then phase p+1.
template <class T>
using StepKernel = void (*)(const Recurrence<T>&, ThreadCtx<T>&, std::int64_t s, std::int64_t b0, std::int64_t b1);

template <class T>
struct CellKernels {
    int fwd_phases, bwd_phases;
    StepKernel<T> fwd_train[2], fwd_infer[2], bwd[2];
    // After the last backward step: dh += dG(last processed step) W_hh, i.e. dL/dh0 (own units).
    void (*bwd_final)(const Recurrence<T>&, ThreadCtx<T>&, std::int64_t b0, std::int64_t b1);
};

// All cells of one ISA for one dtype, plus the packing of W_hh that its microkernel streams.
template <class T>
struct KernelSet {
    int nr;  // panel width = hidden units per block
    // Forward: panels [G][nblk][H][nr] with panel (g, b) holding rows g*H + b*nr + j of W_hh.
    void (*pack_forward)(const T* w_hh, std::int64_t G, std::int64_t H, T* out);
    // Backward: panels [nblk][G*H][nr] with panel b holding columns b*nr + j of W_hh.
    void (*pack_backward)(const T* w_hh, std::int64_t G, std::int64_t H, T* out);
    CellKernels<T> rnn_tanh, rnn_relu, lstm, gru, gru_v1;  // gru_v1: reset_after=false
    // The cells' activation functions on an array (fn 0 sigmoid, 1 tanh, 2 relu): for tests of
    // their accuracy on every ISA.
    void (*activation)(int fn, const T* x, T* y, std::int64_t n);
};

}  // namespace fastrnn
