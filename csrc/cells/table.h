// The cell table: the one description of every cell. Gate count and names, the state it
// carries, what a training step caches, how the driver folds its biases and forms its W_hh
// gradient, and what the diagnostics measure. The driver, the kernel sets, the bindings (and
// through fastrnn._C.cells() the Python package), the C ABI and the CUDA backend read this;
// nothing else spells out a cell's gate count or gate names. The pointwise math lives in the
// cell's header (rnn.h, lstm.h, gru.h, ligru.h); docs/design.md has "how to add a cell".
#pragma once

namespace fastrnn {

// Cell kinds. The values are the C ABI's fastrnn_cell and the codes Python passes: append only.
enum class CellKind : int { RNN_TANH = 0, RNN_RELU = 1, LSTM = 2, GRU = 3, LIGRU = 4, SLIGRU = 5 };
constexpr int kCellKinds = 6;

// A Li-GRU's candidate activation (SpeechBrain's `nonlinearity`). Values are the C ABI's.
enum class Activation : int { Relu = 0, Tanh = 1, Sin = 2, LeakyRelu = 3 };
constexpr double kLeakyReluSlope = 0.01;  // torch.nn.LeakyReLU's default, SpeechBrain's choice

// What one saturation statistic counts among the valid units of a step.
enum class Saturation : int {
    Sigmoid = 0,     // a sigmoid gate below 0.01 or above 0.99
    Tanh = 1,        // |v| > 0.99
    Dead = 2,        // v <= 0: a ReLU unit that passes no gradient
    Activation = 3,  // a Li-GRU candidate: Tanh for tanh and sin, Dead for relu and leaky_relu
};

// A band of W_hh's rows, in H-row blocks [row0, row0 + rows), whose gradient is the gate
// gradients of H-wide block `dblock` times the recurrent input of the step: h_{t-1}, or, for
// input_block >= 0, that cached block of the row (GRU reset_after=false: r*h_{t-1}). The same
// bands give b_hh's gradient.
struct WeightBand {
    int row0, rows, dblock, input_block;
};

constexpr int kMaxGates = 4;

// The variants and regularizers a cell takes (CellInfo::variants).
enum Variant : unsigned {
    kProjection = 1u << 0,          // LSTMP (proj_size)
    kPeephole = 1u << 1,
    kLayerNorm = 1u << 2,           // LayerNorm of both projections (Haste)
    kZoneout = 1u << 3,             // zoneout on h
    kZoneoutC = 1u << 4,            // zoneout on c
    kRecurrentDropout = 1u << 5,    // dropout of h_{t-1} in the recurrent product (Gal & Ghahramani)
    kWeightDrop = 1u << 6,          // DropConnect on W_hh
    kInputNorm = 1u << 7,           // batch norm or LayerNorm of W_ih x alone (Li-GRU)
    kCandidateDropout = 1u << 8,    // dropout of the candidate (Li-GRU)
};

struct CellInfo {
    const char* name;    // the Python cell name; GRU's two forms share "gru"
    CellKind kind;
    bool reset_after;    // GRU: which of its two rows this is (true for every other cell)
    int gates;           // G: row blocks of W_ih and W_hh
    const char* gate_names[kMaxGates];
    bool has_c;          // carries a cell state c (LSTM)
    int cache_blocks;    // H-wide blocks of a cached training row (post-activation gates, ...)
    int dgate_blocks;    // H-wide blocks of gate gradients a backward step writes per row
    int phases;          // barrier-separated phases of one step (forward and backward alike)
    int bias_apart;      // b_hh block kept out of the folded bias b_ih + b_hh (GRU's b_hn), or -1
    int n_bands;
    WeightBand bands[2];
    int n_saturation;    // the diagnostics' saturation statistics
    Saturation saturation[kMaxGates];
    int saturation_block[kMaxGates];  // the cached block each reads; -1: the output h_t
    const char* saturation_names[kMaxGates];
    unsigned variants;   // Variant bits
};

// Rows: one per cell kind, GRU twice (reset_after true, then false).
inline constexpr CellInfo kCellTable[] = {
    {"rnn_tanh", CellKind::RNN_TANH, true, 1, {"h"}, false, 0, 1, 1, -1,
     1, {{0, 1, 0, -1}}, 1, {Saturation::Tanh}, {-1}, {"tanh"}, kRecurrentDropout | kWeightDrop},
    {"rnn_relu", CellKind::RNN_RELU, true, 1, {"h"}, false, 0, 1, 1, -1,
     1, {{0, 1, 0, -1}}, 1, {Saturation::Dead}, {-1}, {"dead"}, kRecurrentDropout | kWeightDrop},
    // i, f, g, o; cache i, f, g, o (c_t apart).
    {"lstm", CellKind::LSTM, true, 4, {"input", "forget", "cell", "output"}, true, 4, 4, 1, -1,
     1, {{0, 4, 0, -1}},
     4, {Saturation::Sigmoid, Saturation::Sigmoid, Saturation::Tanh, Saturation::Sigmoid}, {0, 1, 2, 3},
     {"input", "forget", "cell", "output"},
     kProjection | kPeephole | kLayerNorm | kZoneout | kZoneoutC | kRecurrentDropout | kWeightDrop},
    // r, z, n; cache r, z, n and W_hn h + b_hn; gradients dr, dz, dn and dn*r, which W_hn sees.
    {"gru", CellKind::GRU, true, 3, {"reset", "update", "new"}, false, 4, 4, 1, 2,
     2, {{0, 2, 0, -1}, {2, 1, 3, -1}},
     3, {Saturation::Sigmoid, Saturation::Sigmoid, Saturation::Tanh}, {0, 1, 2}, {"reset", "update", "new"},
     kLayerNorm | kZoneout | kRecurrentDropout | kWeightDrop},
    // reset_after=false: cache r, z, n and r*h_{t-1}, the input of W_hn; two phases.
    {"gru", CellKind::GRU, false, 3, {"reset", "update", "new"}, false, 4, 3, 2, -1,
     2, {{0, 2, 0, -1}, {2, 1, 2, 3}},
     3, {Saturation::Sigmoid, Saturation::Sigmoid, Saturation::Tanh}, {0, 1, 2}, {"reset", "update", "new"},
     kZoneout | kRecurrentDropout | kWeightDrop},
    // a (candidate), z (SpeechBrain's order); cache act(a), z and act'(a).
    {"ligru", CellKind::LIGRU, true, 2, {"candidate", "update"}, false, 3, 2, 1, -1,
     1, {{0, 2, 0, -1}},
     2, {Saturation::Activation, Saturation::Sigmoid}, {0, 1}, {"candidate", "update"}, kInputNorm | kCandidateDropout},
    // SLi-GRU: LayerNorm on the recurrent product (its statistics need a phase of their own).
    {"sligru", CellKind::SLIGRU, true, 2, {"candidate", "update"}, false, 3, 2, 2, -1,
     1, {{0, 2, 0, -1}},
     2, {Saturation::Activation, Saturation::Sigmoid}, {0, 1}, {"candidate", "update"}, kInputNorm | kCandidateDropout},
};
constexpr int kCellRows = int(sizeof(kCellTable) / sizeof(kCellTable[0]));

// The row of a cell kind (GRU: the form reset_after selects); -1 for an unknown kind.
constexpr int cell_row_index(CellKind kind, bool reset_after) {
    for (int i = 0; i < kCellRows; ++i)
        if (kCellTable[i].kind == kind && (kind != CellKind::GRU || kCellTable[i].reset_after == reset_after))
            return i;
    return -1;
}

// A band of W_hh rows whose input is a cached block, not h_{t-1}: its recurrent product needs a
// second GEMM per step on that input (GRU reset_after=false: W_hn (r*h)).
constexpr bool second_gemm(const CellInfo& c) {
    for (int i = 0; i < c.n_bands; ++i)
        if (c.bands[i].input_block >= 0) return true;
    return false;
}

// What the cells' policies (csrc/cells/*.h) and the step kernels read at compile time: a row's
// numbers, so that no policy repeats them.
template <int Row>
struct CellTraits {
    static constexpr int row = Row;
    static constexpr int gates = kCellTable[Row].gates;
    static constexpr int cache_gates = kCellTable[Row].cache_blocks;
    static constexpr int dgate_blocks = kCellTable[Row].dgate_blocks;
    static constexpr bool has_c = kCellTable[Row].has_c;
    static constexpr bool two_phase = second_gemm(kCellTable[Row]);  // GRU reset_after=false
};

// The gate-gradient block that feeds W_hh's row block q (the bands above).
constexpr int band_dblock(const CellInfo& c, int q) {
    for (int i = 0; i < c.n_bands; ++i)
        if (q >= c.bands[i].row0 && q < c.bands[i].row0 + c.bands[i].rows) return c.bands[i].dblock + q - c.bands[i].row0;
    return q;
}

// Saturation::Activation resolved for a Li-GRU activation.
constexpr Saturation resolve(Saturation s, Activation act) {
    if (s != Saturation::Activation) return s;
    return act == Activation::Tanh || act == Activation::Sin ? Saturation::Tanh : Saturation::Dead;
}

}  // namespace fastrnn
