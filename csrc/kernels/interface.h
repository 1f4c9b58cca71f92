// The kernels' interface: how the driver hands one layer-direction's recurrence to the per-step
// kernels of an ISA, and the kernel set an ISA provides. csrc/dispatch/ picks the set; the
// driver (csrc/core/) fills a Recurrence per direction and runs the phases on its threads.
#pragma once
#include <cstdint>

#include "../cells/table.h"
#include "reduced.h"

namespace fastrnn {

// Rows of A per register block of the recurrent GEMM's microkernel on ISAs with 32 vector
// registers (AVX-512): a choice per microarchitecture made in csrc/dispatch/ (8 or 6; gemm.h).
int microkernel_rows();
// Whether the hoisted input products of long sequences run on the microkernel (gemm.h's
// input_gemm) rather than BLAS: a per-microarchitecture choice too.
bool own_input_gemm();

// Most panels one thread's GEMM tile holds (the float32 AVX2 LSTM forward step at N <= 32: 2 unit
// blocks x 4 gates; forward_units_group in step_common.h).
constexpr int kMaxTilePanels = 8;
// Panels per group of the hoisted input product on the microkernel (gemm.h's input_gemm).
constexpr int kInputPanels = 6;
// Rows of A per block of the hoisted input product on the microkernel (gemm.h's input_gemm): a
// block (<= 96 x K) stays in L2 while the panels pass over it.
constexpr std::int64_t kInputRows = 96;
// Most phases (barrier-separated parts) of one step: LayerNorm LSTM has three.
constexpr int kMaxPhases = 3;

// Columns of one cached training row (one step, one sequence, one direction) beyond the gates,
// as offsets from the row start; -1 where the variant does not keep it. `ld` is the row length.
// Backward overwrites the gates with their gradients, and LayerNorm's x^ blocks with the
// gradients of the projections they normalize (dL/d(W_ih x), dL/d(W_hh h)).
struct RowLayout {
    std::int64_t ld = 0;
    std::int64_t m = -1;        // LSTMP: m_t = o*tanh(c_t), the projection's input [H]
    std::int64_t ctil = -1;     // zoneout on c: the candidate f*c_{t-1} + i*g before zoneout [H]
    std::int64_t xhat_ih = -1;  // LayerNorm or batch norm: normalized input projection [G*H]
    std::int64_t xhat_hh = -1;  // LayerNorm: normalized recurrent projection [G*H]
    std::int64_t chat = -1;     // LayerNorm LSTM: normalized cell candidate [H]
    std::int64_t rstd = -1;     // LayerNorm: 1/sqrt(var + eps) of the ih, hh (and c) rows [2 or 3]
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
    std::int64_t K;                // units of the state h_t (P with a projection, else H)
    bool reverse;                  // processes t = T-1 .. 0
    bool train;                    // keep the cache (post-activation gates, c_t)
    const std::int64_t* lengths;   // null: every sequence has length T
    const T* packed;               // W_hh packed by pack_forward (forward) or pack_backward
    const T* w_hh;                 // forward: W_hh [G*H, K] row-major, read in place instead of `packed` (null: packed)
    const ReducedMatrix* reduced_hh;  // forward (inference): W_hh in int8 or bf16, used instead of both (null: float)
    const T* bias;                 // [G*H] folded biases (b_ih + b_hh, but GRU reset_after's b_hn)
    const T* bhn;                  // [H] GRU reset_after: b_hn, inside r*(.)
    T* gates;  std::int64_t ld_gates;
    T* hbuf;                       // [2, N, H] state ping-pong: step s reads hbuf[s&1], writes hbuf[~s&1]
    T* c;                          // [N, H] LSTM cell state, updated in place by each unit's owner
    T* c_hist;                     // [T, N, H] LSTM c_t cache (training)
    T* rh;     std::int64_t ld_rh; // GRU reset_after=false: r*h_{t-1}, the input of the second GEMM
    T* y;      std::int64_t ld_y;  // outputs [T, N, ld_y], already offset to this direction

    // Variants (null / off for the plain cells).
    RowLayout row;                 // extra columns of the cached rows
    const T* packed_hr;            // LSTMP: W_hr packed like W_hh (forward: [1][P/nr][H][nr]; backward: [H/nr][P][nr])
    const T* w_hr;                 // LSTMP forward: W_hr [P, H] row-major, in place of `packed_hr` (null: packed)
    const ReducedMatrix* reduced_hr;  // LSTMP forward: W_hr in int8 or bf16 (null: float)
    T* m;      std::int64_t ld_m;  // LSTMP: m_t rows (the cache block in training, else scratch [N, H])
    T* dproj;                      // LSTMP backward: dL/d(W_hr m_t) [T, N, P] for dW_hr
    const T* peep;                 // [3, H] peepholes (i, f, o)
    T* hr;                         // [2, N, K] h_{t-1} * rec_mask, the recurrent GEMM's input (null: hbuf)
    const T* rmask;                // [N, K] recurrent dropout mask
    const T* zh; const T* zc;      // zoneout masks [T, N, K] / [T, N, H], or one row of rates
    bool z_rows;                   // zh/zc are per-(t, n) masks (else a single row, reused)
    const T* ln_hh; const T* ln_c_w; const T* ln_c_b;  // LayerNorm gains/bias
    double* stats;                 // LayerNorm: per-row partials of each unit block [N, nblk, 2]
    T* ln_raw;                     // LayerNorm forward: the raw recurrent projection [N, G*H]
    T* ln_work;                    // LayerNorm LSTM: c~ (inference forward), dL/d(normalized c) (backward) [N, H]
    T* g_ln_hh; T* g_ln_c_w; T* g_ln_c_b;  // LayerNorm backward: gradients, added by each unit's owner
    Activation act;                // Li-GRU: the candidate's nonlinearity
    const T* cmask;                // Li-GRU: [N, H] dropout mask of the candidate (null: none)

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
// The tile keeps its content from one phase of a step to the next (LayerNorm reads it again).
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
    // Reduced precision: the recurrent product's input converted (ReducedMatrix::convert; [N]
    // rows, and int8's [N] scales), once per step and thread: `reduced_of` and `reduced_step` say
    // which input it holds.
    std::uint8_t* reduced_rows = nullptr;
    float* reduced_scales = nullptr;
    const void* reduced_of = nullptr;
    std::int64_t reduced_step = -1;
};

// The per-step kernels of one cell for one ISA and dtype. A step has one to kMaxPhases phases;
// the driver runs phase p of step s on every thread's unit range, then a barrier, then phase
// p+1. A phase works on blocks of the H cell units, or (`on_state`) of the K state units
// (LSTMP's projection phases).
template <class T>
using StepKernel = void (*)(const Recurrence<T>&, ThreadCtx<T>&, std::int64_t s, std::int64_t b0, std::int64_t b1);

template <class T>
struct CellKernels {
    int fwd_phases, bwd_phases;
    StepKernel<T> fwd_train[kMaxPhases], fwd_infer[kMaxPhases], bwd[kMaxPhases];
    bool fwd_on_state[kMaxPhases], bwd_on_state[kMaxPhases];
    // After the last backward step: dh += dG(last processed step) W_hh, i.e. dL/dh0 (own state units).
    void (*bwd_final)(const Recurrence<T>&, ThreadCtx<T>&, std::int64_t b0, std::int64_t b1);
};

// The kernels of one row of the cell table: the plain cell, the same with the regularizers
// compiled in (recurrent dropout, zoneout), and the variants the cell has (peepholes, LSTMP with
// and without peepholes, LayerNorm). A form the cell does not have has no phases.
template <class T>
struct CellKernelForms {
    CellKernels<T> plain, reg, peephole, proj, proj_peephole, layer_norm;
};

// All cells of one ISA for one dtype, plus the packing of W_hh that its microkernel streams.
template <class T>
struct KernelSet {
    int nr;  // panel width = hidden units per block
    // Forward: W [G*H, K] to panels [G][nblk][K][nr], panel (g, b) holding rows g*H + b*nr + j.
    void (*pack_forward)(const T* w, std::int64_t G, std::int64_t H, std::int64_t K, T* out);
    // Backward: W [R, K] to panels [K/nr][R][nr], panel b holding columns b*nr + j.
    void (*pack_backward)(const T* w, std::int64_t R, std::int64_t K, T* out);
    // LayerNorm of whole rows (the hoisted input projection of LayerNorm cells) and its
    // backward; x^ and 1/sigma go to columns xhat and rstd of each row (csrc/kernels/norm_stats.h).
    void (*ln_rows)(T* rows, std::int64_t n_rows, std::int64_t ld, std::int64_t width, const T* gain,
                    std::int64_t xhat, std::int64_t rstd, bool train);
    void (*ln_rows_backward)(const T* rows, T* drows, std::int64_t n_rows, std::int64_t ld, std::int64_t width,
                             const T* gain, T* g_gain, std::int64_t xhat, std::int64_t rstd);
    // Batch norm of the hoisted input projection over its valid rows (Li-GRU; the statistics
    // of columns, where ln_rows takes those of rows) and its backward (csrc/kernels/norm_stats.h).
    void (*bn_rows)(T* rows, std::int64_t T_, std::int64_t N, const std::int64_t* lengths, std::int64_t ld,
                    std::int64_t width, const T* gain, T* mean, T* var, double momentum, T* rstd_out,
                    std::int64_t xhat, bool batch_stats, double* work);
    void (*bn_rows_backward)(const T* rows, T* drows, std::int64_t T_, std::int64_t N, const std::int64_t* lengths,
                             std::int64_t ld, std::int64_t width, const T* gain, const T* rstd, T* g_gain,
                             std::int64_t xhat, bool batch_stats, double* work);
    CellKernelForms<T> cells[kCellRows];  // indexed like kCellTable
    // The cells' activation functions on an array (fn 0 sigmoid, 1 tanh, 2 relu): for tests of
    // their accuracy on every ISA.
    void (*activation)(int fn, const T* x, T* y, std::int64_t n);
    // c[n*ldc + r] = dot(w row r, a row n) for `rows` rows of w [rows, depth] (row-major, in place)
    // and N rows of a: the products of a few rows (streaming steps) without packing (gemm.h).
    // `next`: the rows the caller reads after these (nullptr: the ones that follow in memory).
    void (*rows_gemm)(std::int64_t rows, std::int64_t depth, const T* w, std::int64_t N, const T* a, std::int64_t lda,
                      T* c, std::int64_t ldc, const T* next);
    // C[M, n] = A[M, K] W^T, W [n, K] packed by pack_forward(w, 1, n, K): the hoisted input
    // product on the microkernel (gemm.h); spill holds kInputRows x kInputPanels x nr.
    void (*input_gemm)(std::int64_t M, std::int64_t K, const T* a, std::int64_t lda, const T* packed, std::int64_t n,
                       T* c, std::int64_t ldc, T* spill);
    // The sum of n elements with this ISA's loads: a read-bandwidth probe (gemm.h).
    T (*read_sum)(const T* p, std::int64_t n);
};

}  // namespace fastrnn
