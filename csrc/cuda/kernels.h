// The CUDA kernels of the recurrent driver (csrc/cuda/driver.cu): a tiled GEMM, the per-step
// kernels that fuse the recurrent product of a step with the cell's pointwise function, their
// persistent variants that run every step of a layer in one launch, and small elementwise
// kernels. Written against csrc/cuda/exec.h, so the same source runs on the GPU and in the host
// emulator.
//
// No cuBLAS: the GEMMs are fastrnn's own kernels. The toolkit this backend is developed with has
// no cuBLAS to link against, and the per-step recurrent products must be fused with the cells
// anyway (cuBLAS cannot call a pointwise function per tile). The large hoisted GEMMs (input
// projection, weight gradients, dx) use the tiled kernel below; replacing them by cuBLAS where it
// is available is a drop-in change in gemm() of driver.cu.
//
// The cell math is the CPU's: csrc/cells/*.h compiled for the device with the scalar vector type
// (FASTRNN_HD). Tiles: a block owns kUnits consecutive hidden units (one thread each, all gates of
// its unit) and kBN rows of the batch; each thread keeps kBN x gates accumulators in registers.
// No atomics: every sum runs in a fixed order, so results are bitwise reproducible run to run.
#pragma once
#include <cstdint>

#include "../core/desc.h"
#include "exec.h"

#define FASTRNN_ISA_NS isa_cuda
#include "../cells/gru.h"
#include "../cells/lstm.h"
#include "../cells/rnn.h"
#undef FASTRNN_ISA_NS

namespace fastrnn {
namespace cuda {

using i64 = std::int64_t;
using fastrnn::FwdRow;  // csrc/cells/rows.h
using fastrnn::BwdRow;
using isa_cuda::GRUCell;
using isa_cuda::LSTMCell;
using isa_cuda::RNNCell;
template <class T>
using Lane = isa_cuda::Scalar<T>;  // the cells' vector type on the device: one unit per thread

constexpr int kUnits = 32;  // hidden units (= threads) per block of the recurrent kernels
constexpr int kBN = 8;      // batch rows per tile (register blocking of the recurrent product)
constexpr int kBK = 32;     // depth of one staged chunk of the recurrent product's left operand
constexpr int kDiagValues = 4;  // per row and unit tile: carried dh^2, total dh^2, arriving dc^2, total dc^2

FASTRNN_HD constexpr i64 ceil_div(i64 a, i64 b) { return (a + b - 1) / b; }
template <class U>
FASTRNN_DEV U min_of(U a, U b) { return a < b ? a : b; }

// ---------------------------------------------------------------- GEMM

// C[M, N] = alpha * op(A)[M, K] op(B)[K, N] + beta * C, row-major (the CPU driver's gemm()).
template <class T>
struct GemmArgs {
    bool ta, tb;
    i64 M, N, K;
    T alpha;
    const T* A;
    i64 lda;
    const T* B;
    i64 ldb;
    T beta;
    T* C;
    i64 ldc;
};

// Shared-memory tiled GEMM: a block computes a kGM x kGN tile of C, staging kGK-deep slices of
// op(A) and op(B) in shared memory; each of its 256 threads accumulates a 4 x 4 sub-tile.
constexpr int kGM = 64, kGN = 64, kGK = 16, kGT = 4;
constexpr int kGemmThreads = (kGM / kGT) * (kGN / kGT);
template <class T>
constexpr std::size_t gemm_smem() { return sizeof(T) * (kGK * kGM + kGK * kGN); }

template <class T>
struct Gemm {
    using Args = GemmArgs<T>;
    static FASTRNN_DEV void run(const Args& g) {
        T* As = shared_memory<T>();  // [kGK][kGM]
        T* Bs = As + kGK * kGM;      // [kGK][kGN]
        const i64 tiles_n = ceil_div(g.N, kGN);
        const i64 m0 = (block_index() / tiles_n) * kGM, n0 = (block_index() % tiles_n) * kGN;
        const int t = thread_index(), tr = t / (kGN / kGT), tc = t % (kGN / kGT);
        T acc[kGT][kGT];
        for (int a = 0; a < kGT; ++a)
            for (int b = 0; b < kGT; ++b) acc[a][b] = T(0);
        for (i64 k0 = 0; k0 < g.K; k0 += kGK) {
            // Consecutive threads read consecutive addresses of the operand in memory.
            for (int e = t; e < kGK * kGM; e += kGemmThreads) {
                const int kk = g.ta ? e / kGM : e % kGK, ii = g.ta ? e % kGM : e / kGK;
                const i64 i = m0 + ii, k = k0 + kk;
                As[kk * kGM + ii] = (i < g.M && k < g.K) ? load(g.ta ? g.A + k * g.lda + i : g.A + i * g.lda + k) : T(0);
            }
            for (int e = t; e < kGK * kGN; e += kGemmThreads) {
                const int kk = g.tb ? e % kGK : e / kGN, jj = g.tb ? e / kGK : e % kGN;
                const i64 j = n0 + jj, k = k0 + kk;
                Bs[kk * kGN + jj] = (j < g.N && k < g.K) ? load(g.tb ? g.B + j * g.ldb + k : g.B + k * g.ldb + j) : T(0);
            }
            sync_block();
            for (int kk = 0; kk < kGK; ++kk) {
                T a[kGT], b[kGT];
                for (int q = 0; q < kGT; ++q) a[q] = As[kk * kGM + tr * kGT + q];
                for (int q = 0; q < kGT; ++q) b[q] = Bs[kk * kGN + tc * kGT + q];
                for (int x = 0; x < kGT; ++x)
                    for (int y = 0; y < kGT; ++y) acc[x][y] += a[x] * b[y];
            }
            sync_block();
        }
        for (int x = 0; x < kGT; ++x)
            for (int y = 0; y < kGT; ++y) {
                const i64 i = m0 + tr * kGT + x, j = n0 + tc * kGT + y;
                if (i < g.M && j < g.N) {
                    T* c = g.C + i * g.ldc + j;
                    // beta 0: C is not read (it may hold NaN patterns)
                    store(c, g.beta == T(0) ? g.alpha * acc[x][y] : g.alpha * acc[x][y] + g.beta * load(c));
                }
            }
    }
};

// ---------------------------------------------------------------- elementwise

constexpr int kElemThreads = 256;
FASTRNN_DEV i64 global_index() { return block_index() * block_threads() + thread_index(); }

// out[k, r] = in[r, k] for in [R, K]: W_hh^T, the layout the forward recurrent product streams
// (consecutive threads = consecutive units read consecutive addresses).
template <class T>
struct Transpose {
    struct Args {
        const T* in;
        T* out;
        i64 R, K;
    };
    static FASTRNN_DEV void run(const Args& a) {
        const i64 i = global_index();
        if (i < a.R * a.K) store(a.out + i, load(a.in + (i % a.R) * a.K + i / a.R));
    }
};

// Biases the cells add: b_ih + b_hh, except GRU reset_after's b_hn, which r multiplies (kept in bhn).
template <class T>
struct FoldBias {
    struct Args {
        const T* b_ih;
        const T* b_hh;  // both null: no bias
        T* bias;
        T* bhn;
        i64 GH, H;
        bool split_hn;
    };
    static FASTRNN_DEV void run(const Args& a) {
        const i64 j = global_index();
        if (j < a.GH) {
            const bool apart = a.split_hn && j >= 2 * a.H;
            store(a.bias + j, a.b_ih ? load(a.b_ih + j) + (apart ? T(0) : load(a.b_hh + j)) : T(0));
        }
        if (j < a.H) store(a.bhn + j, (a.b_ih && a.split_hn) ? load(a.b_hh + 2 * a.H + j) : T(0));
    }
};

// out[i] = a[i] * b[i] (dropout masks; out may be a).
template <class T>
struct Multiply {
    struct Args {
        const T* a;
        const T* b;
        T* out;
        i64 n;
    };
    static FASTRNN_DEV void run(const Args& a) {
        const i64 i = global_index();
        if (i < a.n) store(a.out + i, load(a.a + i) * load(a.b + i));
    }
};

// out[c] += sum over rows of a[r, c] (bias gradients), summed in row order.
template <class T>
struct ColumnSums {
    struct Args {
        const T* a;
        i64 rows, cols, lda;
        T* out;
    };
    static FASTRNN_DEV void run(const Args& a) {
        const i64 c = global_index();
        if (c >= a.cols) return;
        T s = T(0);
        for (i64 r = 0; r < a.rows; ++r) s += load(a.a + r * a.lda + c);
        store(a.out + c, load(a.out + c) + s);
    }
};

// gather[n, k] = dg[(t0(n) N + n) ld + k], k < cols: the gate gradients of each sequence's first
// step, whose h_{t-1} is h0 (t0 = 0 forward, the sequence's last step reverse).
template <class T>
struct GatherFirstStep {
    struct Args {
        const T* dg;
        i64 ld, cols, T_, N;
        const i64* lengths;
        bool reverse;
        T* gather;
    };
    static FASTRNN_DEV void run(const Args& a) {
        const i64 i = global_index();
        if (i >= a.N * a.cols) return;
        const i64 n = i / a.cols, k = i % a.cols;
        const i64 t0 = !a.reverse ? 0 : (a.lengths ? load(a.lengths + n) - 1 : a.T_ - 1);
        store(a.gather + i, load(a.dg + (t0 * a.N + n) * a.ld + k));
    }
};

// dst (C-contiguous) = src viewed with `shape` and byte `strides` (up to kMaxDims dims): makes
// non-contiguous device inputs contiguous (batch_first, transposed views).
constexpr int kMaxDims = 4;
template <class Word>
struct StridedCopy {
    struct Args {
        const char* src;
        Word* dst;
        i64 shape[kMaxDims], strides[kMaxDims];
        int ndim;
        i64 n;
    };
    static FASTRNN_DEV void run(const Args& a) {
        const i64 i = global_index();
        if (i >= a.n) return;
        i64 rest = i, off = 0;
        for (int k = a.ndim - 1; k >= 0; --k) {
            off += (rest % a.shape[k]) * a.strides[k];
            rest /= a.shape[k];
        }
        store(a.dst + i, load(reinterpret_cast<const Word*>(a.src + off)));
    }
};

// ---------------------------------------------------------------- recurrent steps

// The step logic below mirrors csrc/kernels/steps_plain.h and step_common.h (the CPU step kernels) one unit per thread;
// the cell math itself is the shared csrc/cells code.
FASTRNN_DEV bool row_valid(const i64* lengths, i64 n, i64 t) { return lengths == nullptr || t < load(lengths + n); }
template <class T>
FASTRNN_DEV i64 time_of(const Recurrence<T>& r, i64 s) { return r.reverse ? r.steps - 1 - s : s; }
template <class T>
FASTRNN_DEV i64 bptt_time_of(const Recurrence<T>& r, i64 s) { return r.reverse ? s : r.steps - 1 - s; }

// Right operand of a recurrent product: element (k, gate q, unit column u) at p[k*ld + q*gs + u].
// Forward: W_hh^T [H, G*H] in global memory (gs = H, u = unit) or its slice in shared memory
// (gs = kUnits, u = unit within the block). Backward: W_hh [G*H, H] rows (gs unused).
template <class T>
struct Operand {
    const T* p;
    i64 ld, gs;
    FASTRNN_DEV Operand rows_from(i64 k0) const { return Operand{p + k0 * ld, ld, gs}; }
    FASTRNN_DEV Operand gates_from(i64 g0) const { return Operand{p + g0 * gs, ld, gs}; }
};

// acc[r][q] += sum_{k<K} A[(n0 + r) lda + k] * B(k, q, u) for the tile's rows r < nrows. Every
// thread of the block takes part (the left operand is staged in shared memory As [kBN][kBK]);
// only active threads (units < H) accumulate. Sums run in k order: deterministic.
template <int NG, class T>
FASTRNN_DEV void tile_product(T (&acc)[kBN][NG], const T* A, i64 lda, i64 K, i64 n0, int nrows, Operand<T> b, i64 u,
                              bool active, T* As) {
    for (i64 k0 = 0; k0 < K; k0 += kBK) {
        const int kc = int(min_of<i64>(K - k0, kBK));
        for (int e = thread_index(); e < kBN * kBK; e += block_threads()) {
            const int r = e / kBK, kk = e % kBK;
            As[e] = (r < nrows && kk < kc) ? load_coherent(A + (n0 + r) * lda + k0 + kk) : T(0);
        }
        sync_block();
        if (active)
            for (int kk = 0; kk < kc; ++kk) {
                T w[NG];
                FASTRNN_UNROLL
                for (int q = 0; q < NG; ++q) w[q] = load(b.p + (k0 + kk) * b.ld + q * b.gs + u);
                FASTRNN_UNROLL
                for (int r = 0; r < kBN; ++r)
                    if (r < nrows) {  // uniform in the block; unrolled, so acc stays in registers
                        const T a = As[r * kBK + kk];
                        FASTRNN_UNROLL
                        for (int q = 0; q < NG; ++q) acc[r][q] += a * w[q];
                    }
            }
        sync_block();
    }
}

template <int NG, class T>
FASTRNN_DEV void zero_acc(T (&acc)[kBN][NG]) {
    for (int r = 0; r < kBN; ++r)
        for (int q = 0; q < NG; ++q) acc[r][q] = T(0);
}

// Where a thread of a recurrent kernel works: the batch rows n0.. of its tile and its unit.
struct TilePos {
    i64 n0;
    int nrows;
    i64 j;       // hidden unit
    i64 u;       // its column in the right operand (j in global memory, j - first unit in shared)
    bool active; // j < H
};

// Padded row: the state is held, the output is zero, the cache row is zeroed (step_common.h forward_hold).
template <class Cell, bool Train, class T>
FASTRNN_DEV void forward_hold(const Recurrence<T>& r, i64 t, i64 n, i64 j, const T* h_prev, T* h_next) {
    const i64 N = r.N, H = r.H;
    store(h_next + n * H + j, load(h_prev + n * H + j));
    store(r.y + (t * N + n) * r.ld_y + j, T(0));
    if constexpr (Train) {
        T* g = r.gates + (t * N + n) * r.ld_gates + j;
        for (int q = 0; q < Cell::cache_gates; ++q) store(g + q * H, T(0));
        if constexpr (Cell::has_c) store(r.c_hist + (t * N + n) * H + j, load(r.c + n * H + j));
    }
}

// One whole forward step (RNN, LSTM, GRU reset_after=true) or the second phase of GRU
// reset_after=false (n from W_hn (r*h)); `w` is the W_hh^T operand.
template <class Cell, bool Train, class T>
FASTRNN_DEV void forward_tile(const Recurrence<T>& r, i64 s, const TilePos& p, Operand<T> w, T* As) {
    constexpr int NG = Cell::two_phase ? 1 : Cell::gates;
    const i64 t = time_of(r, s), N = r.N, H = r.H;
    const T* h_prev = r.hbuf + (s & 1) * N * H;
    T* h_next = r.hbuf + ((s + 1) & 1) * N * H;
    T acc[kBN][NG];
    zero_acc(acc);
    if constexpr (Cell::two_phase)  // A = r*h_{t-1}: cache block 3 in training, scratch otherwise
        tile_product(acc, Train ? r.gates + t * N * r.ld_gates + 3 * H : r.rh, Train ? r.ld_gates : r.ld_rh, H, p.n0,
                     p.nrows, w.gates_from(2), p.u, p.active, As);
    else
        tile_product(acc, h_prev, H, H, p.n0, p.nrows, w, p.u, p.active, As);
    if (!p.active) return;
    const i64 j = p.j;
    for (int rr = 0; rr < kBN; ++rr) {
        if (rr >= p.nrows) break;
        const i64 n = p.n0 + rr;
        if (!row_valid(r.lengths, n, t)) {
            forward_hold<Cell, Train>(r, t, n, j, h_prev, h_next);
            continue;
        }
        T* grow = r.gates + (t * N + n) * r.ld_gates + j;
        FwdRow<T> row{};  // fields by name: csrc/cells/rows.h may grow
        row.xp = row.gates = grow;
        row.hp = acc[rr];
        row.hs = 1;
        row.bias = r.bias + j;
        row.bhn = r.bhn ? r.bhn + j : nullptr;
        row.h_prev = h_prev + n * H + j;
        row.h = h_next + n * H + j;
        row.c = r.c ? r.c + n * H + j : nullptr;
        row.y = r.y + (t * N + n) * r.ld_y + j;
        row.c_hist = r.c_hist ? r.c_hist + (t * N + n) * H + j : nullptr;
        row.H = H;
        Cell::template forward<Train, Lane<T>>(row, 1);
    }
}

// GRU reset_after=false, first phase: r, z and r*h_{t-1}.
template <class Cell, bool Train, class T>
FASTRNN_DEV void forward_rz_tile(const Recurrence<T>& r, i64 s, const TilePos& p, Operand<T> w, T* As) {
    const i64 t = time_of(r, s), N = r.N, H = r.H;
    const T* h_prev = r.hbuf + (s & 1) * N * H;
    T acc[kBN][2];
    zero_acc(acc);
    tile_product(acc, h_prev, H, H, p.n0, p.nrows, w, p.u, p.active, As);
    if (!p.active) return;
    const i64 j = p.j;
    for (int rr = 0; rr < kBN; ++rr) {
        if (rr >= p.nrows) break;
        const i64 n = p.n0 + rr;
        T* grow = r.gates + (t * N + n) * r.ld_gates + j;
        T* rh = Train ? grow + 3 * H : r.rh + n * r.ld_rh + j;
        if (!row_valid(r.lengths, n, t)) {
            store(grow, T(0));
            store(grow + H, T(0));
            store(rh, T(0));
            continue;
        }
        FwdRow<T> row{};
        row.xp = row.gates = grow;
        row.hp = acc[rr];
        row.hs = 1;
        row.bias = r.bias + j;
        row.h_prev = h_prev + n * H + j;
        row.rh = rh;
        row.H = H;
        Cell::template forward_rz<Lane<T>>(row, 1);
    }
}

// Per-step records of a backward pass (diagnostics): per step t, unit tile and row, the
// kDiagValues sums of the tile's units; null when off. Reduced after the loop (FinishDiagnostics).
struct DiagSlots {
    double* partial;  // [T][unit tiles][N][kDiagValues]
    i64 unit_tiles;
};

// dL/dh_{t-1} through W_hh from the gate gradients of processing step s (step_common.h recurrent_grad).
template <class Cell, class T>
FASTRNN_DEV void recurrent_grad_tile(const Recurrence<T>& r, T (&acc)[kBN][1], i64 s, const TilePos& p,
                                     Operand<T> w, T* As) {
    const i64 H = r.H;
    const T* dg = r.dgates + bptt_time_of(r, s) * r.N * r.ld_dgates;
    if constexpr (Cell::gates == 3 && Cell::two_phase) {  // GRU reset_after=false: r, z here; n via r*h
        tile_product(acc, dg, r.ld_dgates, 2 * H, p.n0, p.nrows, w, p.u, p.active, As);
    } else if constexpr (Cell::gates == 3) {  // GRU reset_after=true: d(W_hn h) = dn*r, kept in block 3
        tile_product(acc, dg, r.ld_dgates, 2 * H, p.n0, p.nrows, w, p.u, p.active, As);
        tile_product(acc, dg + 3 * H, r.ld_dgates, H, p.n0, p.nrows, w.rows_from(2 * H), p.u, p.active, As);
    } else {
        tile_product(acc, dg, r.ld_dgates, Cell::gates * H, p.n0, p.nrows, w, p.u, p.active, As);
    }
}

// step_common.h backward_row, for one unit.
template <class Cell, class T>
FASTRNN_DEV BwdRow<T> backward_row(const Recurrence<T>& r, i64 t, i64 n, i64 j, T* dh_total, T* dc_total) {
    const i64 N = r.N, H = r.H;
    const i64 tf = r.reverse ? t + 1 : t - 1;
    const bool prev_in_seq = tf >= 0 && tf < r.steps && row_valid(r.lengths, n, tf);
    const T* h_prev = prev_in_seq ? r.y + (tf * N + n) * r.ld_y + j : r.h0 + n * H + j;
    const T* c_prev = nullptr;
    if constexpr (Cell::has_c) c_prev = prev_in_seq ? r.c_hist + (tf * N + n) * H + j : r.c0 + n * H + j;
    BwdRow<T> row{};  // fields by name: csrc/cells/rows.h may grow
    row.gates = r.gates + (t * N + n) * r.ld_gates + j;
    row.dgates = r.dgates + (t * N + n) * r.ld_dgates + j;
    row.c = Cell::has_c ? r.c_hist + (t * N + n) * H + j : nullptr;
    row.c_prev = c_prev;
    row.h_prev = h_prev;
    row.h = r.y + (t * N + n) * r.ld_y + j;
    row.dh = dh_total;
    row.dh_carry = r.dh + n * H + j;
    row.dc = r.dc ? r.dc + n * H + j : nullptr;
    row.dc_total = dc_total;
    row.clip = r.bptt_clip;
    row.H = H;
    return row;
}

// Sums each row's kDiagValues over the block's units, in unit order, into the step's slots.
// red: shared [kDiagValues][kBN][block threads] doubles.
FASTRNN_DEV void reduce_diag(const double (&v)[kBN][kDiagValues], const DiagSlots& d, i64 t, i64 unit_tile, i64 N,
                             const TilePos& p, double* red) {
    const int nt = block_threads(), me = thread_index();
    for (int rr = 0; rr < kBN; ++rr)
        for (int q = 0; q < kDiagValues; ++q) red[(q * kBN + rr) * nt + me] = v[rr][q];
    sync_block();
    for (int e = me; e < kDiagValues * kBN; e += nt) {
        const int q = e / kBN, rr = e % kBN;
        if (rr >= p.nrows) continue;
        double s = 0;
        for (int u = 0; u < nt; ++u) s += red[(q * kBN + rr) * nt + u];
        store(d.partial + ((t * d.unit_tiles + unit_tile) * N + p.n0 + rr) * kDiagValues + q, s);
    }
    sync_block();
}

// One whole backward step (RNN, LSTM, GRU reset_after=true), or the first phase of GRU
// reset_after=false (steps_plain.h backward_step). `w` is the W_hh operand (rows of W_hh).
template <class Cell, class T>
FASTRNN_DEV void backward_tile(const Recurrence<T>& r, const DiagSlots& diag, i64 unit_tile, i64 s, const TilePos& p,
                               Operand<T> w, T* As, double* red) {
    const i64 t = bptt_time_of(r, s), N = r.N, H = r.H, j = p.j;
    T acc[kBN][1];
    zero_acc(acc);
    if (s > 0) recurrent_grad_tile<Cell>(r, acc, s - 1, p, w, As);
    double v[kBN][kDiagValues];
    for (int rr = 0; rr < kBN; ++rr)
        for (int q = 0; q < kDiagValues; ++q) v[rr][q] = 0.0;
    if (p.active)
        for (int rr = 0; rr < kBN; ++rr) {
            if (rr >= p.nrows) break;
            const i64 n = p.n0 + rr;
            T* carry = r.dh + n * H + j;
            if (!row_valid(r.lengths, n, t)) {  // the carries pass through; no gradient enters
                store(carry, load(carry) + acc[rr][0]);
                T* dg = r.dgates + (t * N + n) * r.ld_dgates + j;
                for (int q = 0; q < Cell::dgate_blocks; ++q) store(dg + q * H, T(0));
                continue;
            }
            T total = acc[rr][0] + load(carry);
            v[rr][0] = double(total) * double(total);
            if (r.dy) total += load(r.dy + (t * N + n) * r.ld_dy + j);
            v[rr][1] = double(total) * double(total);
            if constexpr (Cell::has_c) {
                const T dc = load(r.dc + n * H + j);
                v[rr][2] = double(dc) * double(dc);
            }
            T dc_total = T(0);
            T* dct = diag.partial ? &dc_total : nullptr;
            Cell::template backward<Lane<T>>(backward_row<Cell>(r, t, n, j, &total, dct), 1);
            v[rr][3] = double(dc_total) * double(dc_total);
        }
    if (diag.partial) reduce_diag(v, diag, t, unit_tile, N, p, red);
}

// GRU reset_after=false, second phase: dL/d(r*h) = dn W_hn, then dr and the r*(.) part of dL/dh_{t-1}.
template <class Cell, class T>
FASTRNN_DEV void backward_r_tile(const Recurrence<T>& r, i64 s, const TilePos& p, Operand<T> w, T* As) {
    const i64 t = bptt_time_of(r, s), N = r.N, H = r.H;
    T acc[kBN][1];
    zero_acc(acc);
    tile_product(acc, r.dgates + t * N * r.ld_dgates + 2 * H, r.ld_dgates, H, p.n0, p.nrows, w.rows_from(2 * H), p.u,
                 p.active, As);
    if (!p.active) return;
    for (int rr = 0; rr < kBN; ++rr) {
        if (rr >= p.nrows) break;
        const i64 n = p.n0 + rr;
        if (!row_valid(r.lengths, n, t)) continue;  // dgates row zeroed by the first phase
        BwdRow<T> row = backward_row<Cell>(r, t, n, p.j, static_cast<T*>(nullptr), static_cast<T*>(nullptr));
        row.d_rh = acc[rr];
        Cell::template backward_r<Lane<T>>(row, 1);
    }
}

// After the last step: dL/dh0 = carry + dG(last step) W_hh, for every row.
template <class Cell, class T>
FASTRNN_DEV void backward_final_tile(const Recurrence<T>& r, const TilePos& p, Operand<T> w, T* As) {
    T acc[kBN][1];
    zero_acc(acc);
    recurrent_grad_tile<Cell>(r, acc, r.steps - 1, p, w, As);
    if (!p.active) return;
    for (int rr = 0; rr < kBN; ++rr) {
        if (rr >= p.nrows) break;
        T* dh = r.dh + (p.n0 + rr) * r.H + p.j;
        store(dh, load(dh) + acc[rr][0]);
    }
}

// ---------------------------------------------------------------- recurrent kernels

// Arguments of the recurrent kernels: both directions of a layer run in one launch (blocks of
// direction 1 follow those of direction 0).
template <class T>
struct StepArgs {
    Recurrence<T> rec[2];
    DiagSlots diag[2];
    i64 s;            // processing step (per-step kernels)
    i64 row_tiles;    // ceil(N / kBN)
    i64 unit_tiles;   // ceil(H / kUnits)
};

// Shared memory of a recurrent kernel: diagnostics reduction buffer, the W_hh slice (persistent
// kernels), the staged left operand. In that order, so every part stays 8-byte aligned.
template <class T>
struct StepSmem {
    static std::size_t bytes(bool diag, i64 slice_elems) {
        return (diag ? sizeof(double) * kDiagValues * kBN * kUnits : 0) + sizeof(T) * (slice_elems + kBN * kBK);
    }
    double* red;
    T* slice;
    T* As;
    FASTRNN_DEV StepSmem(bool diag, i64 slice_elems) {
        red = shared_memory<double>();
        slice = reinterpret_cast<T*>(red + (diag ? kDiagValues * kBN * kUnits : 0));
        As = slice + slice_elems;
    }
};

template <class T>
FASTRNN_DEV TilePos tile_pos(const Recurrence<T>& r, i64 row_tile, i64 unit_tile, bool shared_operand) {
    TilePos p;
    p.n0 = row_tile * kBN;
    p.nrows = int(min_of<i64>(kBN, r.N - p.n0));
    p.j = unit_tile * kUnits + thread_index();
    p.u = shared_operand ? thread_index() : p.j;
    p.active = p.j < r.H;
    return p;
}

// One processing step (phase `Phase`) of both directions: a block per (direction, unit tile, row tile).
template <class Cell, bool Train, int Phase, class T>
struct ForwardStep {
    using Args = StepArgs<T>;
    static FASTRNN_DEV void run(const Args& a) {
        const i64 per_dir = a.row_tiles * a.unit_tiles, b = block_index() % per_dir;
        const Recurrence<T>& r = a.rec[block_index() / per_dir];
        const TilePos p = tile_pos(r, b % a.row_tiles, b / a.row_tiles, false);
        const StepSmem<T> sm(false, 0);
        const Operand<T> w{r.packed, r.G * r.H, r.H};  // W_hh^T in global memory
        if constexpr (Cell::two_phase && Phase == 0)
            forward_rz_tile<Cell, Train>(r, a.s, p, w, sm.As);
        else
            forward_tile<Cell, Train>(r, a.s, p, w, sm.As);
    }
};

template <class Cell, int Phase, class T>
struct BackwardStep {
    using Args = StepArgs<T>;
    static FASTRNN_DEV void run(const Args& a) {
        const i64 per_dir = a.row_tiles * a.unit_tiles, dir = block_index() / per_dir, b = block_index() % per_dir;
        const Recurrence<T>& r = a.rec[dir];
        const i64 unit_tile = b / a.row_tiles;
        const TilePos p = tile_pos(r, b % a.row_tiles, unit_tile, false);
        const StepSmem<T> sm(a.diag[dir].partial != nullptr, 0);
        const Operand<T> w{r.packed, r.H, 0};  // W_hh in global memory
        if constexpr (Phase == 0)
            backward_tile<Cell>(r, a.diag[dir], unit_tile, a.s, p, w, sm.As, sm.red);
        else
            backward_r_tile<Cell>(r, a.s, p, w, sm.As);
    }
};

template <class Cell, class T>
struct BackwardFinal {
    using Args = StepArgs<T>;
    static FASTRNN_DEV void run(const Args& a) {
        const i64 per_dir = a.row_tiles * a.unit_tiles, b = block_index() % per_dir;
        const Recurrence<T>& r = a.rec[block_index() / per_dir];
        const TilePos p = tile_pos(r, b % a.row_tiles, b / a.row_tiles, false);
        const StepSmem<T> sm(false, 0);
        backward_final_tile<Cell>(r, p, Operand<T>{r.packed, r.H, 0}, sm.As);
    }
};

// Persistent kernels (small batches): one cooperative launch runs every step of a layer. A block
// owns a unit tile of one direction for the whole layer and keeps its slice of W_hh in shared
// memory, so W_hh is read from global memory once per layer instead of once per step; steps are
// separated by grid barriers (cooperative groups), after which every block reads the state the
// others wrote (load_coherent). The cuDNN "persistent RNN" idea (Diamos et al. 2016).
template <class T>
FASTRNN_DEV i64 forward_slice_elems(const Recurrence<T>& r) { return r.H * r.G * kUnits; }

template <class Cell, bool Train, class T>
struct ForwardPersistent {
    using Args = StepArgs<T>;
    static FASTRNN_DEV void run(const Args& a) {
        const i64 unit_tile = block_index() % a.unit_tiles;
        const Recurrence<T>& r = a.rec[block_index() / a.unit_tiles];
        const i64 H = r.H, GH = r.G * H, width = r.G * kUnits, elems = forward_slice_elems(r);
        const StepSmem<T> sm(false, elems);
        // slice[k][g][u] = W_hh^T[k, g*H + first unit + u] (zero past H)
        for (i64 e = thread_index(); e < elems; e += block_threads()) {
            const i64 k = e / width, g = (e / kUnits) % r.G, j = unit_tile * kUnits + e % kUnits;
            sm.slice[e] = j < H ? load(r.packed + k * GH + g * H + j) : T(0);
        }
        sync_block();
        const Operand<T> w{sm.slice, width, kUnits};
        for (i64 s = 0; s < r.steps; ++s) {
            if constexpr (Cell::two_phase) {
                for (i64 rt = 0; rt < a.row_tiles; ++rt)
                    forward_rz_tile<Cell, Train>(r, s, tile_pos(r, rt, unit_tile, true), w, sm.As);
                sync_grid();
            }
            for (i64 rt = 0; rt < a.row_tiles; ++rt)
                forward_tile<Cell, Train>(r, s, tile_pos(r, rt, unit_tile, true), w, sm.As);
            sync_grid();
        }
    }
};

template <class T>
FASTRNN_DEV i64 backward_slice_elems(const Recurrence<T>& r) { return r.G * r.H * kUnits; }

template <class Cell, class T>
struct BackwardPersistent {
    using Args = StepArgs<T>;
    static FASTRNN_DEV void run(const Args& a) {
        const i64 unit_tile = block_index() % a.unit_tiles, dir = block_index() / a.unit_tiles;
        const Recurrence<T>& r = a.rec[dir];
        const i64 H = r.H, elems = backward_slice_elems(r);
        const StepSmem<T> sm(a.diag[dir].partial != nullptr, elems);
        // slice[k][u] = W_hh[k, first unit + u] (zero past H)
        for (i64 e = thread_index(); e < elems; e += block_threads()) {
            const i64 k = e / kUnits, j = unit_tile * kUnits + e % kUnits;
            sm.slice[e] = j < H ? load(r.packed + k * H + j) : T(0);
        }
        sync_block();
        const Operand<T> w{sm.slice, kUnits, 0};
        for (i64 s = 0; s < r.steps; ++s) {
            for (i64 rt = 0; rt < a.row_tiles; ++rt)
                backward_tile<Cell>(r, a.diag[dir], unit_tile, s, tile_pos(r, rt, unit_tile, true), w, sm.As, sm.red);
            sync_grid();
            if constexpr (Cell::two_phase) {
                for (i64 rt = 0; rt < a.row_tiles; ++rt)
                    backward_r_tile<Cell>(r, s, tile_pos(r, rt, unit_tile, true), w, sm.As);
                sync_grid();
            }
        }
        for (i64 rt = 0; rt < a.row_tiles; ++rt)
            backward_final_tile<Cell>(r, tile_pos(r, rt, unit_tile, true), w, sm.As);
    }
};

// ---------------------------------------------------------------- diagnostics

// Per step t of one layer-direction, from the slots: the total dL/dh_t and dL/dc_t squared norms
// over valid rows, and the propagation records over rows valid at t and at the step BPTT
// processed before it (diagnostics.h record_propagation). One thread per t; adds into the outputs.
struct FinishDiagnostics {
    struct Args {
        const double* partial;
        i64 T_, N, unit_tiles;
        const i64* lengths;
        bool reverse;
        double *grad_h_sq, *grad_c_sq, *carried_sq, *prev_state_sq;  // [T] of this layer-direction; null: skip
    };
    static FASTRNN_DEV double slot_sum(const Args& a, i64 t, i64 n, int q) {
        double s = 0;
        for (i64 u = 0; u < a.unit_tiles; ++u) s += load(a.partial + ((t * a.unit_tiles + u) * a.N + n) * kDiagValues + q);
        return s;
    }
    static FASTRNN_DEV void run(const Args& a) {
        const i64 t = global_index();
        if (t >= a.T_) return;
        const i64 s = a.reverse ? t : a.T_ - 1 - t;
        const i64 tp = s == 0 ? -1 : (a.reverse ? s - 1 : a.T_ - s);
        double gh = 0, gc = 0, carried = 0, previous = 0;
        for (i64 n = 0; n < a.N; ++n) {
            if (!row_valid(a.lengths, n, t)) continue;
            gh += slot_sum(a, t, n, 1);
            gc += slot_sum(a, t, n, 3);
            if (tp >= 0 && row_valid(a.lengths, n, tp)) {
                carried += slot_sum(a, t, n, 0) + slot_sum(a, t, n, 2);
                previous += slot_sum(a, tp, n, 1) + slot_sum(a, tp, n, 2);
            }
        }
        if (a.grad_h_sq) store(a.grad_h_sq + t, load(a.grad_h_sq + t) + gh);
        if (a.grad_c_sq) store(a.grad_c_sq + t, load(a.grad_c_sq + t) + gc);
        if (a.carried_sq) {
            store(a.carried_sq + t, load(a.carried_sq + t) + carried);
            store(a.prev_state_sq + t, load(a.prev_state_sq + t) + previous);
        }
    }
};

}  // namespace cuda
}  // namespace fastrnn
