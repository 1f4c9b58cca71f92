// What a call computes: the layer stack (Desc), its weights, and the regularizers' noise. Plain
// structs, the same for the CPU and CUDA drivers; the C ABI mirrors them. The kernels' view of one
// recurrence is in csrc/kernels/interface.h.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../cells/table.h"
#include "../kernels/interface.h"

namespace fastrnn {

// How a Li-GRU normalizes its hoisted input projection W_ih x (SpeechBrain's `normalization`).
enum class InputNorm : int { None = 0, Batch = 1, Layer = 2 };

struct Desc {
    CellKind cell = CellKind::LSTM;
    bool reset_after = true;  // GRU only
    bool bias = true;
    std::int64_t T = 0, N = 0, C = 0, H = 0, L = 1, D = 1;
    // Cell variants (csrc/cells/lstm.h, layernorm.h); the defaults are the plain cells.
    std::int64_t P = 0;       // LSTM projection size (LSTMP): the state h_t = W_hr m_t has P units
    bool peephole = false;    // LSTM: diagonal peepholes into i, f (c_{t-1}) and o (c_t)
    bool layer_norm = false;  // LSTM, GRU reset_after: LayerNorm of both projections (and LSTM c_t)
    bool zoneout_c = false;   // LSTM: zoneout on c (the training cache keeps the candidate cell too)
    // Li-GRU and SLi-GRU (csrc/cells/ligru.h).
    Activation activation = Activation::Relu;  // the candidate's nonlinearity
    InputNorm input_norm = InputNorm::None;    // normalization of W_ih x
    double bn_momentum = 0.05;                 // running statistics: (1 - m) old + m batch
    bool recurrent_affine = false;             // SLi-GRU: its recurrent LayerNorm has a gain and a shift
    // Of one call: a training call (with a cache) whose batch norm uses the running statistics, as a
    // differentiated module in eval mode does (torch's BatchNorm in eval mode).
    bool bn_frozen = false;
};

// The cell's row of the cell table (csrc/cells/table.h).
inline const CellInfo& cell_info(const Desc& d) {
    const int row = cell_row_index(d.cell, d.reset_after);
    if (row < 0) throw std::invalid_argument("cell: unknown cell kind " + std::to_string(int(d.cell)));
    return kCellTable[row];
}
inline int cell_gates(const Desc& d) { return cell_info(d).gates; }  // G: row blocks of W_ih / W_hh
inline bool cell_has_c(const Desc& d) { return cell_info(d).has_c; }
inline int cell_cache_gates(const Desc& d) { return cell_info(d).cache_blocks; }  // H-wide blocks of a cached row
inline std::int64_t state_size(const Desc& d) { return d.P > 0 ? d.P : d.H; }  // K: units of h_t
// What normalizes the projections: LayerNorm of W_hh h (the LayerNorm cells, SLi-GRU), of the
// input projection row by row (the LayerNorm cells, Li-GRU layernorm), batch norm of the input
// projection column by column over the batch and time (Li-GRU batchnorm).
inline bool ln_hh(const Desc& d) { return d.layer_norm || d.cell == CellKind::SLIGRU; }
inline bool ln_ih(const Desc& d) { return d.layer_norm || d.input_norm == InputNorm::Layer; }
inline bool bn_ih(const Desc& d) { return d.input_norm == InputNorm::Batch; }

// The layout of one cached training row of this problem (kernels/interface.h): the cell's
// cached blocks, then what the variants keep (LSTMP m, zoneout's c~, the normalizations'
// normalized values and row statistics).
inline RowLayout row_layout(const Desc& d) {
    const std::int64_t H = d.H, GH = cell_gates(d) * H;
    const bool lstm = d.cell == CellKind::LSTM;
    RowLayout r;
    r.ld = cell_info(d).cache_blocks * H;
    if (lstm && d.P > 0) r.m = r.ld, r.ld += H;
    if (lstm && d.zoneout_c && !d.layer_norm) r.ctil = r.ld, r.ld += H;  // LayerNorm keeps c~ in chat
    if (ln_ih(d) || bn_ih(d)) r.xhat_ih = r.ld, r.ld += GH;
    if (ln_hh(d)) r.xhat_hh = r.ld, r.ld += GH;
    if (lstm && d.layer_norm) r.chat = r.ld, r.ld += H;
    if (ln_ih(d) || ln_hh(d)) r.rstd = r.ld, r.ld += lstm && d.layer_norm ? 3 : 2;  // rows' 1/sigma: ih, hh, c
    return r;
}


// Weights and gradients of one layer-direction (torch layout: W_ih [G*H, C_k], W_hh [G*H, H]).
// Variant tensors are null when the variant is off; LayerNorm gains and biases follow the
// Haste formulation (csrc/cells/layernorm.h). W_hh is [G*H, K] and W_ih of layers > 0 takes D*K inputs.
// Li-GRU (csrc/cells/ligru.h): b_ih is the input normalization's shift (BatchNorm/LayerNorm beta),
// ln_ih its scale (gamma), b_hh the SLi-GRU recurrent LayerNorm's shift and ln_hh its scale.
template <class T>
struct LayerWeights {
    const T* w_ih;
    const T* w_hh;
    const T* b_ih;  // null when bias=false
    const T* b_hh;
    const T* w_hr = nullptr;     // [P, H] LSTMP projection
    const T* w_peep = nullptr;   // [3, H] peepholes of i, f, o
    const T* ln_ih = nullptr;    // [G*H] gain of the input projection's normalization (LN or Li-GRU's BN)
    const T* ln_hh = nullptr;    // [G*H] gain of LN(W_hh h)
    const T* ln_c_w = nullptr;   // [H] gain of LN(c_t) (LSTM)
    const T* ln_c_b = nullptr;   // [H] bias of LN(c_t) (LSTM)
    // Li-GRU batch norm of the input projection: running statistics [G*H] (eval mode reads them,
    // a training forward updates them with Desc::bn_momentum, as torch.nn.BatchNorm1d does).
    T* bn_mean = nullptr;
    T* bn_var = nullptr;
};
template <class T>
struct LayerGrads {
    T* w_ih;
    T* w_hh;
    T* b_ih;  // null when bias=false
    T* b_hh;
    T* w_hr = nullptr;
    T* w_peep = nullptr;
    T* ln_ih = nullptr;
    T* ln_hh = nullptr;
    T* ln_c_w = nullptr;
    T* ln_c_b = nullptr;
};

// Regularizer noise of one call, drawn by the caller and passed again to backward (null: off).
// Entry l*D + d of each array belongs to layer l, direction d.
template <class T>
struct Noise {
    const T* rec_mask = nullptr;  // [L*D, N, K] recurrent dropout on h_{t-1} (scaled 0 or 1/(1-p))
    const T* zh_mask = nullptr;   // [L*D, T, N, K] zoneout on h: 1 keeps h_{t-1}, 0 takes the update
    const T* zc_mask = nullptr;   // [L*D, T, N, H] zoneout on c (LSTM)
    T zh_rate = T(0), zc_rate = T(0);  // used where the mask is null: the expected update (inference)
    const T* w_mask = nullptr;    // [L*D, G*H, K] DropConnect on W_hh (scaled 0 or 1/(1-p))
    const T* cand_mask = nullptr;  // [L*D, N, H] Li-GRU dropout of the candidate (SpeechBrain's `dropout`)
};

}  // namespace fastrnn
