#include "driver.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <vector>

#include "../dispatch/dispatch.h"
// AddressSanitizer builds (FASTRNN_SANITIZE=address): poisoned gaps between the scratch regions.
#if defined(__SANITIZE_ADDRESS__)
#define FASTRNN_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FASTRNN_ASAN 1
#endif
#endif
#ifdef FASTRNN_ASAN
#include <sanitizer/asan_interface.h>
#endif
#include "blas.h"
#include "threads.h"

namespace fastrnn {

int cell_gates(const Desc& d) {
    switch (d.cell) {
        case CellKind::LSTM: return 4;
        case CellKind::GRU: return 3;
        default: return 1;
    }
}
int cell_cache_gates(const Desc& d) { return d.cell == CellKind::LSTM || d.cell == CellKind::GRU ? 4 : 0; }
bool cell_has_c(const Desc& d) { return d.cell == CellKind::LSTM; }

RowLayout row_layout(const Desc& d) {
    const std::int64_t H = d.H, GH = cell_gates(d) * H;
    const bool lstm = d.cell == CellKind::LSTM;
    RowLayout r;
    r.ld = cell_cache_gates(d) * H;
    if (lstm && d.P > 0) r.m = r.ld, r.ld += H;
    if (lstm && d.zoneout_c && !d.layer_norm) r.ctil = r.ld, r.ld += H;  // LayerNorm keeps c~ in chat
    if (d.layer_norm) {
        r.xhat_ih = r.ld, r.ld += GH;
        r.xhat_hh = r.ld, r.ld += GH;
        if (lstm) r.chat = r.ld, r.ld += H;
        r.rstd = r.ld, r.ld += lstm ? 3 : 2;
    }
    return r;
}

namespace {

using i64 = std::int64_t;

bool gru_v1(const Desc& d) { return d.cell == CellKind::GRU && !d.reset_after; }
bool gru_reset_after(const Desc& d) { return d.cell == CellKind::GRU && d.reset_after; }

// `reg`: the call has recurrent dropout or zoneout (the plain cells' kernels compile them out).
template <class T>
const CellKernels<T>& cell_of(const KernelSet<T>& k, const Desc& d, bool reg) {
    switch (d.cell) {
        case CellKind::RNN_TANH: return reg ? k.rnn_tanh_reg : k.rnn_tanh;
        case CellKind::RNN_RELU: return reg ? k.rnn_relu_reg : k.rnn_relu;
        case CellKind::LSTM:
            if (d.layer_norm) return k.ln_lstm;
            if (d.P > 0) return d.peephole ? k.lstmp_peep : k.lstmp;
            if (d.peephole) return k.lstm_peep;
            return reg ? k.lstm_reg : k.lstm;
        case CellKind::GRU: break;
    }
    if (d.layer_norm) return k.ln_gru;
    if (d.reset_after) return reg ? k.gru_reg : k.gru;
    return reg ? k.gru_v1_reg : k.gru_v1;
}

// Offsets into the training cache (see cache_elements in driver.h). DH is the width of a
// layer's output, D*K.
struct CacheLayout {
    i64 TN, D, L, DH, gate_block, c_block, dir_block, states, c_states;
    bool dropout;
    RowLayout row;

    CacheLayout(const Desc& d, bool dropout_)
        : TN(d.T * d.N), D(d.D), L(d.L), DH(d.D * state_size(d)),
          gate_block(d.T * d.N * row_layout(d).ld), c_block(cell_has_c(d) ? d.T * d.N * d.H : 0),
          dir_block(gate_block + c_block), states(d.L * d.D * d.N * state_size(d)),
          c_states(cell_has_c(d) ? d.L * d.D * d.N * d.H : 0), dropout(dropout_), row(row_layout(d)) {}

    i64 layer_block(i64 l) const { return TN * DH * ((dropout && l < L - 1) ? 2 : 1) + D * dir_block; }
    i64 layer(i64 l) const {
        i64 off = 0;
        for (i64 k = 0; k < l; ++k) off += layer_block(k);
        return off;
    }
    i64 y(i64 l) const { return layer(l); }
    i64 dropped_input(i64 l) const { return layer(l) + TN * DH; }  // the input of layer l+1
    i64 gates(i64 l, i64 dir) const { return layer(l) + layer_block(l) - (D - dir) * dir_block; }
    i64 c_hist(i64 l, i64 dir) const { return gates(l, dir) + gate_block; }
    i64 h0() const { return layer(L); }
    i64 c0() const { return h0() + states; }
    i64 total() const { return h0() + states + c_states; }
};

// One allocation per call, carved into 64-byte aligned regions. A sizing pass (base == null)
// and the real pass run the same carving code, so the size and the layout cannot disagree.
template <class T>
class Carver {
   public:
    explicit Carver(T* base) : base_(base) {}
    T* take(i64 n) {
        T* p = base_ ? base_ + used_ : nullptr;
        constexpr i64 align = 64 / sizeof(T);
        used_ += (std::max<i64>(n, 0) + align - 1) / align * align;
#ifdef FASTRNN_ASAN
        // Sanitized builds: a poisoned gap after each region, so ASan catches a kernel that runs
        // past its region into the next one (they share one allocation).
        if (p) {
            const i64 end = std::max<i64>(n, 0);
            ASAN_POISON_MEMORY_REGION(p + end, sizeof(T) * std::size_t(used_ + align - (p - base_) - end));
        }
        used_ += align;
#endif
        return p;
    }
    i64 used() const { return used_; }

   private:
    T* base_;
    i64 used_ = 0;
};

// The scratch of one call. Each calling thread keeps its last buffer (up to kKeepBytes) for its
// next call: a fresh multi-megabyte allocation costs a page fault per 4 KiB on first touch, which
// is a measurable share of a small recurrent call.
template <class T>
class Scratch {
   public:
    explicit Scratch(i64 n) {
        const std::size_t bytes = sizeof(T) * std::size_t(std::max<i64>(n, 1));
        Kept& k = kept();
        if (k.bytes >= bytes) {
            p = static_cast<T*>(k.p);
#ifdef FASTRNN_ASAN
            ASAN_UNPOISON_MEMORY_REGION(k.p, k.bytes);  // the last call's redzones
#endif
            return;
        }
        release(k);
        void* mem = ::operator new[](bytes, std::align_val_t(64));  // throws std::bad_alloc
        if (bytes <= kKeepBytes) {
            k.p = mem;
            k.bytes = bytes;
        } else {
            owned_ = mem;
            bytes_ = bytes;
        }
        p = static_cast<T*>(mem);
    }
    ~Scratch() {
#ifdef FASTRNN_ASAN
        if (owned_) ASAN_UNPOISON_MEMORY_REGION(owned_, bytes_);
#endif
        if (owned_) ::operator delete[](owned_, std::align_val_t(64));
    }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    T* p = nullptr;

   private:
    static constexpr std::size_t kKeepBytes = std::size_t(64) << 20;
    struct Kept {
        void* p = nullptr;
        std::size_t bytes = 0;
        ~Kept() { release(*this); }
    };
    static Kept& kept() {
        thread_local Kept k;
        return k;
    }
    static void release(Kept& k) {
#ifdef FASTRNN_ASAN
        if (k.p) ASAN_UNPOISON_MEMORY_REGION(k.p, k.bytes);
#endif
        if (k.p) ::operator delete[](k.p, std::align_val_t(64));
        k.p = nullptr;
        k.bytes = 0;
    }
    void* owned_ = nullptr;
    std::size_t bytes_ = 0;
};

i64 blocks(const Desc& d, int nr) { return (d.H + nr - 1) / nr; }
i64 state_blocks(const Desc& d, int nr) { return (state_size(d) + nr - 1) / nr; }

// Threads for one layer: both directions at once when there are two, and a direction's unit
// blocks split among threads only when a step has enough work to pay for a barrier.
struct ThreadPlan {
    int groups, per_group;
    int total() const { return groups * per_group; }
};

ThreadPlan plan_threads(const Desc& d, int nr) {
    const int nth = step_threads();
    const int groups = (d.D == 2 && nth >= 2) ? 2 : 1;
    const double K = double(state_size(d));  // LSTMP: the recurrent GEMM is [G*H, P], plus the projection
    const double step_flops = 2.0 * double(d.N) * double(cell_gates(d) * d.H) * K + (d.P > 0 ? 2.0 * double(d.N) * K * double(d.H) : 0.0);
    constexpr double kMinFlopsPerThread = 1.2e5;  // ~1.5 us of GEMM per thread and step: a barrier costs a fraction
    i64 per = std::min<i64>(nth / groups, blocks(d, nr));
    per = std::min<i64>(per, std::max<i64>(1, i64(step_flops / kMinFlopsPerThread)));
    return ThreadPlan{groups, int(std::max<i64>(per, 1))};
}

// Per-thread tile and diagnostics buffers.
template <class T>
void carve_threads(Carver<T>& cv, const Desc& d, int threads, int nr, ThreadCtx<T>* tc) {
    for (int i = 0; i < threads; ++i) {
        T* tile = cv.take(d.N * kMaxTilePanels * nr);
        T* dct = cv.take(4 * nr);
        if (tc) tc[i] = ThreadCtx<T>{tile, nullptr, nullptr, nullptr, nullptr, nullptr, dct};
    }
}

// Doubles carved from a T region (the LayerNorm row statistics).
template <class T>
double* take_doubles(Carver<T>& cv, i64 n) {
    return reinterpret_cast<double*>(cv.take(n * i64(sizeof(double) / sizeof(T))));
}

// Runs the recurrences of one layer (one per direction) for all steps on the planned threads.
// Phases over cell units split the H units' blocks, phases over state units (LSTMP) the K ones.
template <class T>
void run_layer(const CellKernels<T>& k, bool fwd, bool train, Recurrence<T>* rec, i64 D, const ThreadPlan& plan,
               ThreadCtx<T>* tc, i64 nblk, i64 nblk_state) {
    Barrier barriers[2] = {Barrier(plan.per_group), Barrier(plan.per_group)};
    const StepKernel<T>* steps = fwd ? (train ? k.fwd_train : k.fwd_infer) : k.bwd;
    const bool* on_state = fwd ? k.fwd_on_state : k.bwd_on_state;
    const int phases = fwd ? k.fwd_phases : k.bwd_phases;
    auto recurrence = [&](i64 dir, const ThreadCtx<T>& thread, int lt, int per, Barrier& bar) {
        Recurrence<T>& r = rec[dir];
        ThreadCtx<T> ctx = thread;  // diagnostics are recorded per direction
        if (ctx.grad_h_sq) ctx.grad_h_sq += dir * r.steps;
        if (ctx.grad_c_sq) ctx.grad_c_sq += dir * r.steps;
        if (ctx.carried_sq) ctx.carried_sq += dir * r.steps;
        if (ctx.prev_state_sq) ctx.prev_state_sq += dir * r.steps;
        if (ctx.rows) std::fill(ctx.rows, ctx.rows + 3 * r.N, 0.0);
        const i64 b0 = nblk * lt / per, b1 = nblk * (lt + 1) / per;
        const i64 s0 = nblk_state * lt / per, s1 = nblk_state * (lt + 1) / per;
        for (i64 s = 0; s < r.steps; ++s)
            for (int p = 0; p < phases; ++p) {
                if (on_state[p])
                    steps[p](r, ctx, s, s0, s1);
                else
                    steps[p](r, ctx, s, b0, b1);
                bar.wait();
            }
        if (!fwd) k.bwd_final(r, ctx, s0, s1);
    };
    const std::int64_t start = now_ns();
    const std::int64_t join_wait = parallel_run(plan.total(), [&](int tid, int n) {
        if (n != plan.total()) {  // the pool was busy: this caller does everything alone
            Barrier solo(1);
            for (i64 dir = 0; dir < D; ++dir) recurrence(dir, tc[0], 0, 1, solo);
            return;
        }
        const int group = tid / plan.per_group, lt = tid % plan.per_group;
        for (i64 dir = 0; dir < D; ++dir)
            if (plan.groups == 1 || dir == group) recurrence(dir, tc[tid], lt, plan.per_group, barriers[group]);
    }, "recurrence");
    report_waits(barriers[0].wait_ns() + barriers[1].wait_ns() + join_wait, now_ns() - start, plan.total());
}

template <class T>
void copy_or_zero(T* dst, const T* src, i64 n) {
    if (src)
        std::memcpy(dst, src, sizeof(T) * static_cast<std::size_t>(n));
    else
        std::memset(static_cast<void*>(dst), 0, sizeof(T) * static_cast<std::size_t>(n));
}

// out[c] += a[r, c] summed over rows r (kept out of line: inlined into its caller, GCC no longer
// vectorises it).
template <class T>
[[gnu::noinline]] void add_rows(const T* a, i64 rows, i64 cols, i64 lda, T* out) {
    for (i64 r = 0; r < rows; ++r)
        for (i64 c = 0; c < cols; ++c) out[c] += a[r * lda + c];
}

// out[c] += sum over all T*N rows of a[r, c] (the bias gradients): sums of 256-row blocks in T,
// added up in double. One running float sum over millions of rows loses ~rows*eps (5e-5 relative
// at T*N = 3.2e6, 25x the error of the weight-gradient GEMMs); blocks keep it at ~1e-7, as fast.
template <class T>
void add_column_sums(const T* a, i64 rows, i64 cols, i64 lda, T* out) {
    constexpr i64 kBlock = 256;
    std::vector<T> part(static_cast<std::size_t>(cols));
    std::vector<double> sum(static_cast<std::size_t>(cols), 0.0);
    for (i64 r0 = 0; r0 < rows; r0 += kBlock) {
        std::fill(part.begin(), part.end(), T(0));
        add_rows(a + r0 * lda, std::min(kBlock, rows - r0), cols, lda, part.data());
        for (i64 c = 0; c < cols; ++c) sum[c] += double(part[c]);
    }
    for (i64 c = 0; c < cols; ++c) out[c] = T(double(out[c]) + sum[c]);
}

// Biases added by the cells: b_ih + b_hh, except GRU reset_after's b_hn, which r multiplies.
template <class T>
void fold_bias(const Desc& d, const LayerWeights<T>& w, T* bias, T* bhn) {
    const i64 GH = cell_gates(d) * d.H, H = d.H;
    const bool unfolded_bhn = gru_reset_after(d);
    for (i64 j = 0; j < GH; ++j) {
        const bool keep_apart = unfolded_bhn && j >= 2 * H;
        bias[j] = d.bias ? w.b_ih[j] + (keep_apart ? T(0) : w.b_hh[j]) : T(0);
    }
    for (i64 j = 0; j < H; ++j) bhn[j] = (d.bias && unfolded_bhn) ? w.b_hh[2 * H + j] : T(0);
}

// W_hh as the recurrence uses it: W_hh * mask under DropConnect (into `buf`), else W_hh itself.
template <class T>
const T* effective_w_hh(const T* w_hh, const T* mask, i64 n, T* buf) {
    if (!mask) return w_hh;
    for (i64 i = 0; i < n; ++i) buf[i] = w_hh[i] * mask[i];
    return buf;
}

// Forward scratch: per direction the input projection (when the cache does not hold it), the
// packed W_hh (and W_hr), biases, states and the variants' buffers; per thread a tile;
// inference with several layers ping-pongs the intermediate outputs. `regularized`: room for
// recurrent dropout, DropConnect and inference zoneout.
template <class T>
struct ForwardScratch {
    T *xp[2], *packed[2], *packed_hr[2], *bias[2], *bhn[2], *hbuf[2], *hr[2], *c[2], *rh[2], *m[2], *ln_raw[2],
        *ln_work[2], *w_eff[2], *zrows, *ybuf;
    double* stats[2];

    ForwardScratch(Carver<T>& cv, const Desc& d, bool train, bool regularized, int threads, int nr,
                   ThreadCtx<T>* tc) {
        const i64 G = cell_gates(d), GH = G * d.H, K = state_size(d), NK = d.N * K, NH = d.N * d.H;
        const i64 nblk = blocks(d, nr), nblk_k = state_blocks(d, nr);
        const bool xp_in_cache = train && cell_cache_gates(d) > 0;
        for (i64 dir = 0; dir < d.D; ++dir) {
            xp[dir] = xp_in_cache ? nullptr : cv.take(d.T * d.N * GH);
            packed[dir] = cv.take(G * nblk * K * nr);
            packed_hr[dir] = cv.take(d.P > 0 ? nblk_k * d.H * nr : 0);
            bias[dir] = cv.take(GH);
            bhn[dir] = cv.take(d.H);
            hbuf[dir] = cv.take(2 * NK);
            hr[dir] = cv.take(regularized ? 2 * NK : 0);
            c[dir] = cv.take(cell_has_c(d) ? NH : 0);
            rh[dir] = cv.take(gru_v1(d) && !train ? NH : 0);
            m[dir] = cv.take(d.P > 0 && !train ? NH : 0);
            ln_raw[dir] = cv.take(d.layer_norm ? d.N * GH : 0);
            ln_work[dir] = cv.take(d.layer_norm ? NH : 0);
            w_eff[dir] = cv.take(regularized ? GH * K : 0);
            stats[dir] = take_doubles(cv, d.layer_norm ? 2 * d.N * nblk * 2 : 0);
        }
        zrows = cv.take(regularized ? K + d.H : 0);
        ybuf = cv.take(!train && d.L > 1 ? 2 * d.T * d.N * d.D * K : 0);
        carve_threads(cv, d, threads, nr, tc);
    }
};

template <class T>
struct BackwardScratch {
    T *dgates[2], *packed[2], *packed_hr[2], *dh[2], *dc[2], *dproj[2], *ln_work[2], *w_eff[2], *dw[2], *ymask[2],
        *dybuf, *gather;
    double* stats[2];

    BackwardScratch(Carver<T>& cv, const Desc& d, bool retain, bool regularized, int threads, int nr,
                    ThreadCtx<T>* tc) {
        const i64 GH = cell_gates(d) * d.H, K = state_size(d), NK = d.N * K, NH = d.N * d.H;
        const i64 nblk = blocks(d, nr), nblk_k = state_blocks(d, nr);
        const i64 ld = row_layout(d).ld;
        const bool own_dgates = ld == 0 || retain;  // else the gradients overwrite the cached gates
        for (i64 dir = 0; dir < d.D; ++dir) {
            dgates[dir] = own_dgates ? cv.take(d.T * d.N * (ld ? ld : d.H)) : nullptr;
            packed[dir] = cv.take(nblk_k * GH * nr);
            packed_hr[dir] = cv.take(d.P > 0 ? nblk * d.P * nr : 0);
            dh[dir] = cv.take(NK);
            dc[dir] = cv.take(cell_has_c(d) ? NH : 0);
            dproj[dir] = cv.take(d.P > 0 ? d.T * NK : 0);
            ln_work[dir] = cv.take(d.layer_norm ? NH : 0);
            w_eff[dir] = cv.take(regularized ? GH * K : 0);
            dw[dir] = cv.take(regularized ? GH * K : 0);
            ymask[dir] = cv.take(regularized ? (d.T + 1) * NK : 0);
            stats[dir] = take_doubles(cv, d.layer_norm ? 2 * d.N * nblk * 2 : 0);
        }
        dybuf = cv.take(d.L > 1 ? 2 * d.T * d.N * d.D * K : 0);
        gather = cv.take(d.N * GH);
        carve_threads(cv, d, threads, nr, tc);
    }
};

// dW_hh rows [r0, r1) += sum over steps of dG^T h_{t-1}, where `dg` points at the gradient
// column that goes with row r0. h_{t-1} is this direction's previous output Y (zero where padded,
// where the gate gradients are zero too; row stride ld_y) except at each sequence's first step,
// which reads h0; `alt` replaces h_{t-1} by another cached per-step input (GRU reset_after=false:
// r*h_{t-1}). dW has K columns.
template <class T>
void accumulate_w_hh(const Desc& d, i64 dir, const i64* lengths, i64 r0, i64 r1, const T* dg, i64 ld_dg,
                     const T* Y, i64 ld_y, const T* alt, i64 ld_alt, const T* h0, T* dW, T* gather) {
    const i64 T_ = d.T, N = d.N, K = state_size(d), rows = r1 - r0;
    T* dWr = dW + r0 * K;
    if (alt) {
        gemm<T>(true, false, rows, K, T_ * N, T(1), dg, ld_dg, alt, ld_alt, T(1), dWr, K);
        return;
    }
    if (T_ > 1) {
        const T* dg_first = dir == 0 ? dg + N * ld_dg : dg;
        const T* y_prev = dir == 0 ? Y : Y + N * ld_y;
        gemm<T>(true, false, rows, K, (T_ - 1) * N, T(1), dg_first, ld_dg, y_prev, ld_y, T(1), dWr, K);
    }
    for (i64 n = 0; n < N; ++n) {  // each sequence's first step reads h0
        const i64 t0 = dir == 0 ? 0 : (lengths ? lengths[n] - 1 : T_ - 1);
        std::memcpy(gather + n * rows, dg + (t0 * N + n) * ld_dg, sizeof(T) * std::size_t(rows));
    }
    gemm<T>(true, false, rows, K, N, T(1), gather, rows, h0, K, T(1), dWr, K);
}

// Peephole gradients: dp_i += sum di*c_{t-1}, dp_f += sum df*c_{t-1}, dp_o += sum do*c~_t over
// every step and row (padded rows have zero gate gradients).
template <class T>
void peephole_grads(const Desc& d, i64 dir, const i64* lengths, const T* dg, i64 ld_dg, const T* c_hist,
                    const T* ctil, i64 ld_ctil, const T* c0, T* gp) {
    const i64 T_ = d.T, N = d.N, H = d.H;
    for (i64 t = 0; t < T_; ++t)
        for (i64 n = 0; n < N; ++n) {
            const i64 tf = dir == 1 ? t + 1 : t - 1;
            const bool prev_in_seq = tf >= 0 && tf < T_ && (lengths == nullptr || tf < lengths[n]);
            const T* cp = prev_in_seq ? c_hist + (tf * N + n) * H : c0 + n * H;
            const T* ct = ctil ? ctil + (t * N + n) * ld_ctil : c_hist + (t * N + n) * H;
            const T* g = dg + (t * N + n) * ld_dg;
            for (i64 j = 0; j < H; ++j) {
                gp[j] += g[j] * cp[j];
                gp[H + j] += g[H + j] * cp[j];
                gp[2 * H + j] += g[3 * H + j] * ct[j];
            }
        }
}

// Zoneout pointers of one layer-direction: per-(t, n) masks, or a row of rates (inference).
template <class T>
void set_zoneout(Recurrence<T>& r, const Desc& d, const Noise<T>& nz, i64 s_idx, const T* zrows) {
    const i64 TNK = d.T * d.N * state_size(d), TNH = d.T * d.N * d.H;
    r.z_rows = nz.zh_mask != nullptr || nz.zc_mask != nullptr;
    if (r.z_rows) {
        r.zh = nz.zh_mask ? nz.zh_mask + s_idx * TNK : nullptr;
        r.zc = nz.zc_mask ? nz.zc_mask + s_idx * TNH : nullptr;
    } else {
        r.zh = nz.zh_rate > T(0) ? zrows : nullptr;
        r.zc = nz.zc_rate > T(0) ? zrows + state_size(d) : nullptr;
    }
}

}  // namespace

std::int64_t cache_elements(const Desc& d, bool dropout) { return CacheLayout(d, dropout).total(); }

std::int64_t forward_scratch_elements(const Desc& d, bool training, int threads, int nr, bool regularized) {
    Carver<float> cv(nullptr);  // float pads to 16 elements per region, double to 8: an upper bound for both
    ForwardScratch<float>(cv, d, training, regularized, threads, nr, nullptr);
    return cv.used();
}

std::int64_t backward_scratch_elements(const Desc& d, bool retain, int threads, int nr, bool regularized) {
    Carver<float> cv(nullptr);
    BackwardScratch<float>(cv, d, retain, regularized, threads, nr, nullptr);
    return cv.used();
}

int saturation_stats(const Desc& d) { return d.cell == CellKind::LSTM ? 4 : d.cell == CellKind::GRU ? 3 : 1; }

template <class T>
NonFinite forward_stats(const Desc& d, const T* cache, const std::int64_t* lengths, bool dropout, double* saturation) {
    const CacheLayout lay(d, dropout);
    const i64 T_ = d.T, N = d.N, H = d.H, K = state_size(d), D = d.D, DK = D * K, S = saturation_stats(d);
    const i64 ld = lay.row.ld;
    // Kind of each saturation statistic: 0 sigmoid gate, 1 tanh gate or tanh RNN output, 2 ReLU output.
    int kind[4] = {0, 0, 1, 0};
    if (d.cell == CellKind::GRU) kind[2] = 1;
    if (d.cell == CellKind::RNN_TANH) kind[0] = 1;
    if (d.cell == CellKind::RNN_RELU) kind[0] = 2;
    // Saturated units of one row, and in `bad` the number of NaN/Inf (v - v is 0 only for finite
    // v). Integer reductions of comparisons: the compiler vectorizes them.
    auto count_row = [H](int k, const T* v, i64& bad) {
        i64 c = 0, nf = 0;
        if (k == 0)
            for (i64 j = 0; j < H; ++j) c += (v[j] < T(0.01)) | (v[j] > T(0.99)), nf += !(v[j] - v[j] == T(0));
        else if (k == 1)
            for (i64 j = 0; j < H; ++j) c += (v[j] < T(-0.99)) | (v[j] > T(0.99)), nf += !(v[j] - v[j] == T(0));
        else
            for (i64 j = 0; j < H; ++j) c += v[j] == T(0), nf += !(v[j] - v[j] == T(0));
        bad += nf;
        return c;
    };
    auto has_nonfinite = [](const T* v, i64 n) {
        i64 nf = 0;
        for (i64 j = 0; j < n; ++j) nf += !(v[j] - v[j] == T(0));
        return nf > 0;
    };
    NonFinite first;
    for (i64 l = 0; l < d.L && (saturation || first.layer < 0); ++l) {
        i64 best_step = T_;  // earliest processing step with a non-finite value in this layer
        for (i64 dir = 0; dir < D; ++dir) {
            const T* gates = ld ? cache + lay.gates(l, dir) : nullptr;
            const T* Y = cache + lay.y(l) + dir * K;
            const T* C = cell_has_c(d) ? cache + lay.c_hist(l, dir) : nullptr;
            for (i64 s = 0; s < T_; ++s) {
                const i64 t = dir == 0 ? s : T_ - 1 - s;
                i64 count[4] = {0, 0, 0, 0}, valid = 0;
                int bad = -1;  // what was non-finite at this step: gates first, then states
                for (i64 n = 0; n < N; ++n) {
                    if (lengths && t >= lengths[n]) continue;
                    ++valid;
                    const T* g = gates ? gates + (t * N + n) * ld : nullptr;
                    const T* y = Y + (t * N + n) * DK;  // K = H without a projection (RNN: no gates)
                    i64 nonfinite = 0;
                    for (i64 q = 0; q < S; ++q) count[q] += count_row(kind[q], g ? g + q * H : y, nonfinite);
                    if (bad < 0 && nonfinite) bad = g ? 0 : 1;
                    if (bad < 0 && g && has_nonfinite(y, K)) bad = 1;
                    if (bad < 0 && C && has_nonfinite(C + (t * N + n) * H, H)) bad = 2;
                }
                if (saturation)
                    for (i64 q = 0; q < S; ++q)
                        saturation[((l * D + dir) * T_ + t) * S + q] =
                            valid ? double(count[q]) / double(valid * H) : std::numeric_limits<double>::quiet_NaN();
                if (bad >= 0 && first.layer < 0 && s < best_step) {
                    best_step = s;
                    first.direction = dir, first.t = t, first.what = bad;
                }
            }
        }
        if (best_step < T_ && first.layer < 0) first.layer = l;
    }
    if (first.layer < 0) first = NonFinite{};
    return first;
}

template NonFinite forward_stats<float>(const Desc&, const float*, const std::int64_t*, bool, double*);
template NonFinite forward_stats<double>(const Desc&, const double*, const std::int64_t*, bool, double*);

namespace {
template <class T>
bool has_noise(const Noise<T>& nz) {
    return nz.rec_mask || nz.zh_mask || nz.zc_mask || nz.w_mask || nz.zh_rate > T(0) || nz.zc_rate > T(0);
}
// Noise the cells see (DropConnect acts on the packed W_hh only).
template <class T>
bool cell_noise(const Noise<T>& nz) {
    return nz.rec_mask || nz.zh_mask || nz.zc_mask || nz.zh_rate > T(0) || nz.zc_rate > T(0);
}
}  // namespace

template <class T>
void forward(const Desc& d, const LayerWeights<T>* w, const T* x, const T* h0, const T* c0,
             const std::int64_t* lengths, const T* masks, T* out, T* h_n, T* c_n, T* cache, const Noise<T>& nz) {
    const KernelSet<T>& ks = active_kernels<T>();
    const CellKernels<T>& k = cell_of(ks, d, cell_noise(nz));
    const bool train = cache != nullptr, has_c = cell_has_c(d), regularized = has_noise(nz);
    const i64 T_ = d.T, N = d.N, H = d.H, K = state_size(d), D = d.D, DK = D * K, G = cell_gates(d), GH = G * H;
    const i64 NK = N * K, NH = N * H, TN = T_ * N, nblk = blocks(d, ks.nr), nblk_k = state_blocks(d, ks.nr);
    const CacheLayout lay(d, masks != nullptr);
    const ThreadPlan plan = plan_threads(d, ks.nr);

    // Scratch, allocated once for the whole call (nothing is allocated inside the time loop).
    std::vector<ThreadCtx<T>> tc(plan.total());
    Carver<T> sizing(nullptr);
    ForwardScratch<T>(sizing, d, train, regularized, plan.total(), ks.nr, nullptr);
    Scratch<T> buf(sizing.used());
    Carver<T> carver(buf.p);
    ForwardScratch<T> ws(carver, d, train, regularized, plan.total(), ks.nr, tc.data());
    if (regularized && !nz.zh_mask && !nz.zc_mask) {  // zoneout's expected update (inference)
        for (i64 j = 0; j < K; ++j) ws.zrows[j] = nz.zh_rate;
        for (i64 j = 0; j < H; ++j) ws.zrows[K + j] = nz.zc_rate;
    }

    for (i64 l = 0; l < d.L; ++l) {
        const i64 C_l = l == 0 ? d.C : DK;
        const T* X = l == 0 ? x
                     : train ? cache + (masks ? lay.dropped_input(l - 1) : lay.y(l - 1))
                             : ws.ybuf + ((l - 1) % 2) * TN * DK;
        T* Y = train ? cache + lay.y(l) : (l == d.L - 1 ? out : ws.ybuf + (l % 2) * TN * DK);
        Recurrence<T> rec[2];
        for (i64 dir = 0; dir < D; ++dir) {
            const LayerWeights<T>& W = w[l * D + dir];
            const i64 s_idx = l * D + dir;
            Recurrence<T>& r = rec[dir];
            r = Recurrence<T>{};
            r.steps = T_; r.N = N; r.H = H; r.G = G; r.K = K;
            r.reverse = dir == 1; r.train = train; r.lengths = lengths;
            r.packed = ws.packed[dir]; r.bias = ws.bias[dir]; r.bhn = ws.bhn[dir];
            const bool in_cache = train && lay.row.ld > 0;  // the cell turns the projection into the cached gates
            r.row = lay.row;
            r.gates = in_cache ? cache + lay.gates(l, dir) : ws.xp[dir];
            r.ld_gates = in_cache ? lay.row.ld : GH;
            r.hbuf = ws.hbuf[dir];
            r.c = has_c ? ws.c[dir] : nullptr;
            r.c_hist = train && has_c ? cache + lay.c_hist(l, dir) : nullptr;
            r.rh = ws.rh[dir]; r.ld_rh = H;
            r.y = Y + dir * K; r.ld_y = DK;
            r.bptt_clip = T(0);
            if (d.P > 0) {
                r.packed_hr = ws.packed_hr[dir];
                r.m = train ? r.gates + lay.row.m : ws.m[dir];
                r.ld_m = train ? r.ld_gates : H;
            }
            r.peep = W.w_peep;
            r.ln_hh = W.ln_hh; r.ln_c_w = W.ln_c_w; r.ln_c_b = W.ln_c_b;
            r.stats = ws.stats[dir]; r.ln_raw = ws.ln_raw[dir]; r.ln_work = ws.ln_work[dir];
            set_zoneout(r, d, nz, s_idx, ws.zrows);

            // Hoisted input projection for all T*N rows (BLAS), W_hh packed for the microkernel.
            gemm<T>(false, true, TN, GH, C_l, T(1), X, C_l, W.w_ih, C_l, T(0), r.gates, r.ld_gates);
            if (d.layer_norm) ks.ln_rows(r.gates, TN, r.ld_gates, GH, W.ln_ih, lay.row.xhat_ih, lay.row.rstd, train);
            const T* w_hh = effective_w_hh(W.w_hh, nz.w_mask ? nz.w_mask + s_idx * GH * K : nullptr, GH * K, ws.w_eff[dir]);
            ks.pack_forward(w_hh, G, H, K, ws.packed[dir]);
            if (d.P > 0) ks.pack_forward(W.w_hr, 1, K, H, ws.packed_hr[dir]);
            fold_bias(d, W, ws.bias[dir], ws.bhn[dir]);
            copy_or_zero(r.hbuf, h0 ? h0 + s_idx * NK : nullptr, NK);
            if (has_c) copy_or_zero(r.c, c0 ? c0 + s_idx * NH : nullptr, NH);
            if (nz.rec_mask) {  // recurrent dropout: the GEMMs read h * mask
                r.rmask = nz.rec_mask + s_idx * NK;
                r.hr = ws.hr[dir];
                for (i64 i = 0; i < NK; ++i) r.hr[i] = r.hbuf[i] * r.rmask[i];
            }
        }
        run_layer(k, true, train, rec, D, plan, tc.data(), nblk, nblk_k);
        for (i64 dir = 0; dir < D; ++dir) {
            const i64 s_idx = l * D + dir;
            std::memcpy(h_n + s_idx * NK, rec[dir].hbuf + (T_ & 1) * NK, sizeof(T) * NK);
            if (has_c) std::memcpy(c_n + s_idx * NH, rec[dir].c, sizeof(T) * NH);
        }
        if (train && masks && l < d.L - 1) {
            const T* m = masks + l * TN * DK;
            T* xd = cache + lay.dropped_input(l);
            for (i64 i = 0; i < TN * DK; ++i) xd[i] = Y[i] * m[i];
        }
    }
    if (train) {
        std::memcpy(out, cache + lay.y(d.L - 1), sizeof(T) * TN * DK);
        copy_or_zero(cache + lay.h0(), h0, d.L * D * NK);
        if (has_c) copy_or_zero(cache + lay.c0(), c0, d.L * D * NH);
    }
}

template <class T>
void backward(const Desc& d, const LayerWeights<T>* w, const T* x, const std::int64_t* lengths, const T* masks,
              T* cache, const T* grad_out, const T* grad_h_n, const T* grad_c_n, T* grad_x, T* grad_h0,
              T* grad_c0, const LayerGrads<T>* g, const BackwardOptions<T>& opt) {
    const KernelSet<T>& ks = active_kernels<T>();
    const Noise<T>& nz = opt.noise;
    const CellKernels<T>& k = cell_of(ks, d, cell_noise(nz));
    const bool has_c = cell_has_c(d), v1 = gru_v1(d), split_h = gru_reset_after(d), regularized = has_noise(nz);
    const i64 T_ = d.T, N = d.N, H = d.H, K = state_size(d), D = d.D, DK = D * K, G = cell_gates(d), GH = G * H;
    const i64 NK = N * K, NH = N * H, TN = T_ * N, nblk = blocks(d, ks.nr), nblk_k = state_blocks(d, ks.nr);
    const CacheLayout lay(d, masks != nullptr);
    const ThreadPlan plan = plan_threads(d, ks.nr);
    const i64 ld_dg = lay.row.ld ? lay.row.ld : H;

    std::vector<ThreadCtx<T>> tc(plan.total());
    Carver<T> sizing(nullptr);
    BackwardScratch<T>(sizing, d, opt.retain, regularized, plan.total(), ks.nr, nullptr);
    Scratch<T> buf(sizing.used());
    Carver<T> carver(buf.p);
    BackwardScratch<T> ws(carver, d, opt.retain, regularized, plan.total(), ks.nr, tc.data());
    T* gather = ws.gather;
    T* zrows = nullptr;  // zoneout rates (a backward through the expected update)
    std::vector<T> zrate_rows;
    if (regularized && !nz.zh_mask && !nz.zc_mask && (nz.zh_rate > T(0) || nz.zc_rate > T(0))) {
        zrate_rows.assign(std::size_t(K + H), T(0));
        std::fill(zrate_rows.begin(), zrate_rows.begin() + K, nz.zh_rate);
        std::fill(zrate_rows.begin() + K, zrate_rows.end(), nz.zc_rate);
        zrows = zrate_rows.data();
    }
    std::vector<double> diag_h, diag_c, diag_r, diag_s, diag_rows;  // per thread [D, T] partial sums, reduced in thread order
    if (opt.diag.grad_h_sq) {
        diag_h.assign(std::size_t(plan.total() * D * T_), 0.0);
        if (has_c && opt.diag.grad_c_sq) diag_c.assign(std::size_t(plan.total() * D * T_), 0.0);
        if (opt.diag.carried_sq) diag_r.assign(std::size_t(plan.total() * D * T_), 0.0);
        if (opt.diag.carried_sq) diag_s.assign(std::size_t(plan.total() * D * T_), 0.0);
        if (opt.diag.carried_sq) diag_rows.assign(std::size_t(plan.total() * 3 * N), 0.0);
    }
    const T clip = opt.bptt_clip > T(0) ? opt.bptt_clip : std::numeric_limits<T>::infinity();

    const T* h0_all = cache + lay.h0();
    const T* c0_all = has_c ? cache + lay.c0() : nullptr;
    const T* dY = grad_out;  // gradient arriving at the outputs of the current layer (null: none)
    for (i64 l = d.L - 1; l >= 0; --l) {
        const i64 C_l = l == 0 ? d.C : DK;
        const T* X = l == 0 ? x : cache + (masks ? lay.dropped_input(l - 1) : lay.y(l - 1));
        const T* Y = cache + lay.y(l);
        T* dX = l == 0 ? grad_x : ws.dybuf + (l % 2) * TN * DK;
        Recurrence<T> rec[2];
        for (i64 dir = 0; dir < D; ++dir) {
            const i64 s_idx = l * D + dir;
            const LayerWeights<T>& W = w[s_idx];
            const LayerGrads<T>& Gr = g[s_idx];
            Recurrence<T>& r = rec[dir];
            r = Recurrence<T>{};
            r.steps = T_; r.N = N; r.H = H; r.G = G; r.K = K;
            r.reverse = dir == 1; r.train = true; r.lengths = lengths;
            r.packed = ws.packed[dir];
            r.row = lay.row;
            // Gate gradients overwrite the cached gates in place (each value is read first),
            // unless the cache must be kept: then they go to scratch. RNN caches no gates.
            r.gates = lay.row.ld ? cache + lay.gates(l, dir) : nullptr;
            r.dgates = ws.dgates[dir] ? ws.dgates[dir] : r.gates;
            r.ld_gates = r.ld_dgates = ld_dg;
            r.c_hist = has_c ? cache + lay.c_hist(l, dir) : nullptr;
            r.y = const_cast<T*>(Y) + dir * K; r.ld_y = DK;
            r.h0 = h0_all + s_idx * NK;
            r.c0 = has_c ? c0_all + s_idx * NH : nullptr;
            r.dy = dY ? dY + dir * K : nullptr; r.ld_dy = DK;
            r.dh = ws.dh[dir];
            r.dc = has_c ? ws.dc[dir] : nullptr;
            r.bptt_clip = clip;
            if (d.P > 0) {
                r.packed_hr = ws.packed_hr[dir];
                r.m = r.gates + lay.row.m;
                r.ld_m = ld_dg;
                r.dproj = ws.dproj[dir];
                ks.pack_backward(W.w_hr, K, H, ws.packed_hr[dir]);
            }
            r.peep = W.w_peep;
            r.ln_hh = W.ln_hh; r.ln_c_w = W.ln_c_w; r.ln_c_b = W.ln_c_b;
            r.g_ln_hh = Gr.ln_hh; r.g_ln_c_w = Gr.ln_c_w; r.g_ln_c_b = Gr.ln_c_b;
            r.stats = ws.stats[dir]; r.ln_work = ws.ln_work[dir];
            set_zoneout(r, d, nz, s_idx, zrows);
            r.rmask = nz.rec_mask ? nz.rec_mask + s_idx * NK : nullptr;
            copy_or_zero(r.dh, grad_h_n ? grad_h_n + s_idx * NK : nullptr, NK);
            if (has_c) copy_or_zero(r.dc, grad_c_n ? grad_c_n + s_idx * NH : nullptr, NH);
            const T* w_hh = effective_w_hh(W.w_hh, nz.w_mask ? nz.w_mask + s_idx * GH * K : nullptr, GH * K, ws.w_eff[dir]);
            ks.pack_backward(w_hh, GH, K, ws.packed[dir]);
        }
        for (int i = 0; i < plan.total() && !diag_h.empty(); ++i) {
            tc[i].grad_h_sq = diag_h.data() + i * D * T_;
            tc[i].grad_c_sq = diag_c.empty() ? nullptr : diag_c.data() + i * D * T_;
            tc[i].carried_sq = diag_r.empty() ? nullptr : diag_r.data() + i * D * T_;
            tc[i].prev_state_sq = diag_s.empty() ? nullptr : diag_s.data() + i * D * T_;
            tc[i].rows = diag_rows.empty() ? nullptr : diag_rows.data() + i * 3 * N;
        }
        run_layer(k, false, true, rec, D, plan, tc.data(), nblk, nblk_k);

        for (i64 dir = 0; dir < D; ++dir) {
            const LayerWeights<T>& W = w[l * D + dir];
            const LayerGrads<T>& Gr = g[l * D + dir];
            const i64 s_idx = l * D + dir;
            const Recurrence<T>& r = rec[dir];
            std::memcpy(grad_h0 + s_idx * NK, r.dh, sizeof(T) * NK);
            if (has_c) std::memcpy(grad_c0 + s_idx * NH, r.dc, sizeof(T) * NH);
            if (!diag_h.empty())  // this direction's records, summed in thread order
                for (int i = 0; i < plan.total(); ++i)
                    for (i64 t = 0; t < T_; ++t) {
                        const std::size_t at = std::size_t((i * D + dir) * T_ + t);
                        opt.diag.grad_h_sq[s_idx * T_ + t] += diag_h[at];
                        diag_h[at] = 0;
                        if (!diag_c.empty()) {
                            opt.diag.grad_c_sq[s_idx * T_ + t] += diag_c[at];
                            diag_c[at] = 0;
                        }
                        if (!diag_r.empty()) {
                            opt.diag.carried_sq[s_idx * T_ + t] += diag_r[at];
                            diag_r[at] = 0;
                        }
                        if (!diag_s.empty()) {
                            opt.diag.prev_state_sq[s_idx * T_ + t] += diag_s[at];
                            diag_s[at] = 0;
                        }
                    }

            // Weight gradients as large GEMMs over all steps. dv: dL/d(gate pre-activations) in
            // the first G blocks; dgx: dL/d(W_ih x) (LayerNorm: through the input LN).
            const T* dv = r.dgates;
            const T* dgx = dv;
            if (d.layer_norm) {
                ks.ln_rows_backward(r.gates, r.dgates, TN, ld_dg, GH, W.ln_ih, Gr.ln_ih, lay.row.xhat_ih, lay.row.rstd);
                dgx = r.dgates + lay.row.xhat_ih;
            }
            gemm<T>(true, false, GH, C_l, TN, T(1), dgx, ld_dg, X, C_l, T(1), Gr.w_ih, C_l);
            // dW_hh (DropConnect: of the masked W_hh, masked again after the GEMMs).
            T* dW = nz.w_mask ? ws.dw[dir] : Gr.w_hh;
            if (nz.w_mask) std::memset(static_cast<void*>(dW), 0, sizeof(T) * std::size_t(GH * K));
            // h_{t-1} as the recurrent GEMM read it: times the recurrent dropout mask.
            const T* Yd = Y + dir * K;
            i64 ld_yd = DK;
            const T* h0d = r.h0;
            if (r.rmask) {
                T* ym = ws.ymask[dir];
                for (i64 t = 0; t < T_; ++t)
                    for (i64 i = 0; i < NK; ++i) ym[t * NK + i] = Yd[t * N * DK + (i / K) * DK + i % K] * r.rmask[i];
                T* h0m = ym + T_ * NK;
                for (i64 i = 0; i < NK; ++i) h0m[i] = r.h0[i] * r.rmask[i];
                Yd = ym, ld_yd = K, h0d = h0m;
            }
            const T* none = nullptr;
            if (d.layer_norm) {  // W_hh h went through the recurrent LN: its gradient is in xhat_hh
                accumulate_w_hh(d, dir, lengths, 0, GH, r.dgates + lay.row.xhat_hh, ld_dg, Yd, ld_yd, none, 0, h0d, dW,
                                gather);
            } else if (split_h) {  // GRU reset_after: W_hn h sees dn*r, kept in block 3
                accumulate_w_hh(d, dir, lengths, 0, 2 * H, dv, ld_dg, Yd, ld_yd, none, 0, h0d, dW, gather);
                accumulate_w_hh(d, dir, lengths, 2 * H, 3 * H, dv + 3 * H, ld_dg, Yd, ld_yd, none, 0, h0d, dW, gather);
            } else if (v1) {  // W_hn multiplies the cached r*h_{t-1} (block 3)
                accumulate_w_hh(d, dir, lengths, 0, 2 * H, dv, ld_dg, Yd, ld_yd, none, 0, h0d, dW, gather);
                accumulate_w_hh(d, dir, lengths, 2 * H, 3 * H, dv + 2 * H, ld_dg, Yd, ld_yd, r.gates + 3 * H, ld_dg,
                                h0d, dW, gather);
            } else {
                accumulate_w_hh(d, dir, lengths, 0, GH, dv, ld_dg, Yd, ld_yd, none, 0, h0d, dW, gather);
            }
            if (nz.w_mask) {
                const T* m = nz.w_mask + s_idx * GH * K;
                for (i64 i = 0; i < GH * K; ++i) Gr.w_hh[i] += dW[i] * m[i];
            }
            if (d.P > 0)  // dW_hr = sum dL/d(W_hr m_t)^T m_t
                gemm<T>(true, false, K, H, TN, T(1), r.dproj, K, r.m, r.ld_m, T(1), Gr.w_hr, H);
            if (d.peephole)
                peephole_grads(d, dir, lengths, dv, ld_dg, r.c_hist, lay.row.ctil >= 0 ? r.gates + lay.row.ctil : none,
                               ld_dg, r.c0, Gr.w_peep);
            if (d.bias) {
                add_column_sums(dv, TN, GH, ld_dg, Gr.b_ih);
                if (split_h) {
                    add_column_sums(dv, TN, 2 * H, ld_dg, Gr.b_hh);
                    add_column_sums(dv + 3 * H, TN, H, ld_dg, Gr.b_hh + 2 * H);
                } else {
                    add_column_sums(dv, TN, GH, ld_dg, Gr.b_hh);
                }
            }
            gemm<T>(false, false, TN, C_l, GH, T(1), dgx, ld_dg, W.w_ih, C_l, dir == 0 ? T(0) : T(1), dX, C_l);
        }
        if (l > 0) {
            if (masks) {
                const T* m = masks + (l - 1) * TN * DK;
                for (i64 i = 0; i < TN * DK; ++i) dX[i] *= m[i];
            }
            dY = dX;
        }
    }
}

template void forward<float>(const Desc&, const LayerWeights<float>*, const float*, const float*, const float*,
                             const std::int64_t*, const float*, float*, float*, float*, float*, const Noise<float>&);
template void forward<double>(const Desc&, const LayerWeights<double>*, const double*, const double*, const double*,
                              const std::int64_t*, const double*, double*, double*, double*, double*,
                              const Noise<double>&);
template void backward<float>(const Desc&, const LayerWeights<float>*, const float*, const std::int64_t*,
                              const float*, float*, const float*, const float*, const float*, float*, float*, float*,
                              const LayerGrads<float>*, const BackwardOptions<float>&);
template void backward<double>(const Desc&, const LayerWeights<double>*, const double*, const std::int64_t*,
                               const double*, double*, const double*, const double*, const double*, double*, double*,
                               double*, const LayerGrads<double>*, const BackwardOptions<double>&);

}  // namespace fastrnn
