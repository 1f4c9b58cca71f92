#include "driver.h"

#include <algorithm>
#include <functional>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "../dispatch/dispatch.h"
#include "blas.h"
#include "skeleton.h"
#include "stream.h"
#include "threads.h"

namespace fastrnn {

namespace {

using i64 = std::int64_t;

// The kernels of the cell's row in the form the call needs. `reg`: the call has recurrent
// dropout, zoneout or candidate dropout (the plain forms compile them out).
template <class T>
const CellKernels<T>& cell_of(const KernelSet<T>& k, const Desc& d, bool reg) {
    const CellKernelForms<T>& f = k.cells[cell_row_index(d.cell, d.reset_after)];
    if (ln_hh(d)) return f.layer_norm;
    if (d.P > 0) return d.peephole ? f.proj_peephole : f.proj;
    if (d.peephole) return f.peephole;
    return reg ? f.reg : f.plain;
}

// CPU scratch regions are 64-byte aligned (a cache line, an AVX-512 vector).
constexpr std::size_t kAlign = 64;

// The scratch of one call. Each calling thread keeps its last buffer (up to kKeepBytes) for its
// next call: a fresh multi-megabyte allocation costs a page fault per 4 KiB on first touch, which
// is a measurable share of a small recurrent call, and of a large one on a VM: on a Zen 3 VM,
// LSTM and GRU inference at D (50, 128, 1024), whose 105 MB input projection was above a 64 MiB
// line, ran 7-8% faster with it kept (90 ms over its 25,600 pages). The memory stays with the
// thread until it exits.
class Scratch {
   public:
    // `own`: a buffer of its own, never the thread's (a stream's kept call: KeptForward).
    explicit Scratch(std::size_t bytes, bool own = false) {
        bytes = std::max<std::size_t>(bytes, 1);
        Kept& k = kept();
        if (own) {
            p = owned_ = ::operator new[](bytes, std::align_val_t(kAlign));
            bytes_ = bytes;
            return;
        }
        if (k.bytes >= bytes) {
            p = k.p;
#ifdef FASTRNN_ASAN
            ASAN_UNPOISON_MEMORY_REGION(k.p, k.bytes);  // the last call's redzones
#endif
            return;
        }
        release(k);
        void* mem = ::operator new[](bytes, std::align_val_t(kAlign));  // throws std::bad_alloc
        if (bytes <= kKeepBytes) {
            k.p = mem;
            k.bytes = bytes;
        } else {
            owned_ = mem;
            bytes_ = bytes;
        }
        p = mem;
    }
    ~Scratch() {
#ifdef FASTRNN_ASAN
        if (owned_) ASAN_UNPOISON_MEMORY_REGION(owned_, bytes_);
#endif
        if (owned_) ::operator delete[](owned_, std::align_val_t(kAlign));
    }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    void* p = nullptr;

   private:
    static constexpr std::size_t kKeepBytes = std::size_t(256) << 20;
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
        if (k.p) ::operator delete[](k.p, std::align_val_t(kAlign));
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

// `input_in_steps`: a streaming step's input product runs on the same threads (weights read in
// place), so its flops count too (the smallest layer input: layer 0's C or the state below).
ThreadPlan plan_threads(const Desc& d, int nr, bool input_in_steps = false) {
    const int nth = step_threads();
    const int groups = (d.D == 2 && nth >= 2) ? 2 : 1;
    const double K = double(state_size(d));  // LSTMP: the recurrent GEMM is [G*H, P], plus the projection
    const double GH = double(cell_gates(d) * d.H), N = double(d.N);
    const double input = input_in_steps ? double(d.L > 1 ? std::min(d.C, state_size(d) * d.D) : d.C) : 0.0;
    const double step_flops = 2.0 * N * GH * (K + input) + (d.P > 0 ? 2.0 * N * K * double(d.H) : 0.0);
    // Flops per thread and step that pay for a barrier each step (0.12 us a round trip between a
    // Xeon's cores, 0.22 on a Zen 3 VM: _C._barrier_ns()) and for waking the other threads once per
    // call, which a call's T steps share. Sequences: 1.2e5 up to T = 33, then 4e6 / T down to 2.5e4
    // from T = 160 (Zen 3, 2 threads, N = 1-4: LSTM and GRU at H = 96-128, T = 64-500, inference
    // and training, 1.3-1.7x faster split; at T = 4-8 a split of those sizes was slower). A
    // one-step stream call starts a region for that one step: an LSTM step at H = 128 (2.6e5
    // flops) took 7.2 us on 2 threads against 6.5 on 1, at H = 160 (4.1e5) 10.1 against 12.1
    // (tests/test_stream.py::test_two_threads_only_for_steps_that_pay).
    const double min_flops_per_thread = input_in_steps ? (d.T == 1 ? 1.6e5 : 1.2e5)
                                                       : std::clamp(4e6 / double(d.T), 2.5e4, 1.2e5);
    i64 per = std::min<i64>(nth / groups, blocks(d, nr));
    per = std::min<i64>(per, std::max<i64>(1, i64(step_flops / min_flops_per_thread)));
    return ThreadPlan{groups, int(std::max<i64>(per, 1))};
}

// Per-thread tile and diagnostics buffers; `reduced`: the recurrent products' converted input rows.
template <class T>
void carve_threads(Carver& cv, const Desc& d, int threads, int nr, ThreadCtx<T>* tc, bool reduced = false) {
    const i64 row_bytes = reduced ? ReducedMatrix::max_row_bytes(std::max(state_size(d), d.H)) : 0;
    for (int i = 0; i < threads; ++i) {
        T* tile = cv.take<T>(d.N * kMaxTilePanels * nr);
        T* dct = cv.take<T>(4 * nr);
        std::uint8_t* rows = cv.take<std::uint8_t>(d.N * row_bytes);
        float* scales = cv.take<float>(reduced ? d.N : 0);
        if (tc) {
            tc[i] = ThreadCtx<T>{tile, nullptr, nullptr, nullptr, nullptr, nullptr, dct};
            tc[i].reduced_rows = rows, tc[i].reduced_scales = scales;
        }
    }
}

// A streaming step's input product X W_ih^T (a few rows, W_ih read in place), by units: the gate
// rows of units [u0, u1). Each row's dot product is the same whatever the split, so the results
// do not depend on the threads.
template <class T>
struct InputRows {
    void (*rows_gemm)(i64 rows, i64 depth, const T* w, i64 N, const T* a, i64 lda, T* c, i64 ldc, const T* next) = nullptr;
    const T *A = nullptr, *W = nullptr;
    T* C = nullptr;
    i64 m = 0, k = 0, lda = 0, ldc = 0, G = 0, H = 0, nr = 0;
    void units(i64 u0, i64 u1) const {
        for (i64 g = 0; u1 > u0 && g < G; ++g)
            rows_gemm(u1 - u0, k, W + (g * H + u0) * k, m, A, lda, C + g * H + u0, ldc,
                      g + 1 < G ? W + ((g + 1) * H + u0) * k : nullptr);
    }
    void blocks(i64 b0, i64 b1) const { units(std::min(H, b0 * nr), std::min(H, b1 * nr)); }
};

// Runs the recurrences of one layer (one per direction) for all steps on the planned threads.
// `input` (a stream's step, one direction): each thread first computes the input product of its
// own units, which its steps alone read: no barrier, and no parallel region of its own.
// Phases over cell units split the H units' blocks, phases over state units (LSTMP) the K ones.
template <class T>
void run_layer(const CellKernels<T>& k, bool fwd, bool train, Recurrence<T>* rec, i64 D, const ThreadPlan& plan,
               ThreadCtx<T>* tc, i64 nblk, i64 nblk_state, const InputRows<T>* input = nullptr) {
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
        if (input && dir == 0) input->blocks(b0, b1);
        for (i64 s = 0; s < r.steps; ++s)
            for (int p = 0; p < phases; ++p) {
                if (on_state[p])
                    steps[p](r, ctx, s, s0, s1);
                else
                    steps[p](r, ctx, s, b0, b1);
                bar.wait(lt);
            }
        if (!fwd) k.bwd_final(r, ctx, s0, s1);
    };
    const bool timed = plan.total() > 1;  // waits exist only between threads (clock reads cost ~20 ns)
    const std::int64_t start = timed ? now_ns() : 0;
    // When each thread started: the first barrier's waits for a pool worker still waking up (tens
    // of microseconds after an idle spell) are start-up, not the contention the back-off is for;
    // counted, they sent every stream step and short sequence after a pause to one thread.
    std::atomic<std::int64_t> last_start{start}, sum_starts{0};
    const auto job = [&](int tid, int n) {
        if (timed) {
            const std::int64_t t = now_ns();
            sum_starts.fetch_add(t, std::memory_order_relaxed);
            std::int64_t seen = last_start.load(std::memory_order_relaxed);
            while (t > seen && !last_start.compare_exchange_weak(seen, t, std::memory_order_relaxed)) {
            }
        }
        if (n != plan.total()) {  // the pool was busy: this caller does everything alone
            Barrier solo(1);
            for (i64 dir = 0; dir < D; ++dir) recurrence(dir, tc[0], 0, 1, solo);
            return;
        }
        const int group = tid / plan.per_group, lt = tid % plan.per_group;
        for (i64 dir = 0; dir < D; ++dir)
            if (plan.groups == 1 || dir == group) recurrence(dir, tc[tid], lt, plan.per_group, barriers[group]);
    };
    // std::ref: a std::function holds a reference_wrapper without allocating (none per step).
    const std::int64_t join_wait = parallel_run(plan.total(), std::ref(job), "recurrence");
    if (timed) {
        const std::int64_t startup = std::int64_t(plan.total()) * last_start.load() - sum_starts.load();
        const std::int64_t waits = barriers[0].wait_ns() + barriers[1].wait_ns() + join_wait;
        i64 passes = 1;  // per thread: a barrier per step phase, and the join
        for (i64 dir = 0; dir < D; ++dir) passes = std::max(passes, 1 + rec[dir].steps * phases);
        report_waits(std::max<std::int64_t>(0, waits - startup), now_ns() - start, plan.total(), passes);
    }
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

// Biases added by the cells: b_ih + b_hh, except the block the cell keeps apart (GRU
// reset_after's b_hn, which r multiplies). Either may be absent.
template <class T>
void fold_bias(const Desc& d, const LayerWeights<T>& w, T* bias, T* bhn) {
    const i64 G = cell_gates(d), H = d.H;
    const int apart = cell_info(d).bias_apart;
    // Gate by gate, one branch-free loop per case: these loops vectorize (a per-element test of
    // which bias is there kept a streaming LSTM step at H=128 in a scalar loop for 0.4 us).
    const auto sum_into = [H](T* out, const T* a, const T* b) {
        if (a && b)
            for (i64 j = 0; j < H; ++j) out[j] = a[j] + b[j];
        else if (a || b)
            std::memcpy(out, a ? a : b, sizeof(T) * std::size_t(H));
        else
            std::memset(static_cast<void*>(out), 0, sizeof(T) * std::size_t(H));
    };
    for (i64 g = 0; g < G; ++g)
        sum_into(bias + g * H, w.b_ih ? w.b_ih + g * H : nullptr, w.b_hh && g != apart ? w.b_hh + g * H : nullptr);
    sum_into(bhn, apart >= 0 && w.b_hh ? w.b_hh + apart * H : nullptr, nullptr);
}

// x rounded to bf16 and back (bf16::round_to_float), for bf16 compute's BPTT.
template <class T>
void round_to_bf16(const T* x, i64 n, T* out) {
    if constexpr (std::is_same_v<T, float>)
        for (i64 i = 0; i < n; ++i) out[i] = bf16::round_to_float(x[i]);
    else
        throw std::invalid_argument("bf16 compute takes float32");
}

// W_hh as the recurrence uses it: W_hh * mask under DropConnect (into `buf`), else W_hh itself.
template <class T>
const T* effective_w_hh(const T* w_hh, const T* mask, i64 n, T* buf) {
    if (!mask) return w_hh;
    for (i64 i = 0; i < n; ++i) buf[i] = w_hh[i] * mask[i];
    return buf;
}

// Threads for the hoisted input products on the microkernel (gemm.h's input_gemm), where the
// dispatch file prefers it to BLAS, or 0 for BLAS. Only for T*N >= 2048 rows: W_ih is packed per
// call, which at fewer rows costs more than the kernel gains (so a run cut into chunks on both
// sides of the threshold may differ in its last bits: docs/guarantees.md).
constexpr i64 kOwnInputMinRows = 2048;
inline int own_input_threads(const Desc& d, bool reduced) {
    if (reduced || !own_input_gemm() || d.T * d.N < kOwnInputMinRows) return 0;
    return int(std::min<i64>(get_num_threads(), (d.T * d.N + kInputRows - 1) / kInputRows));
}

// Forward scratch: per direction the input projection (when the cache does not hold it), the
// packed W_hh (and W_hr), biases, states and the variants' buffers; per thread a tile;
// inference with several layers ping-pongs the intermediate outputs. `regularized`: room for
// recurrent dropout, DropConnect and inference zoneout; `own_ih_threads`: W_ih packed and a
// spill tile per thread for the input product on the microkernel.
template <class T>
struct ForwardScratch {
    T *xp[2], *packed[2], *packed_hr[2], *bias[2], *bhn[2], *hbuf[2], *hr[2], *c[2], *rh[2], *m[2], *ln_raw[2],
        *ln_work[2], *w_eff[2], *zrows, *ybuf;
    double* stats[2];
    double* bn_work;  // batch norm column sums [2, G*H]
    std::uint8_t* low_rows;  // reduced precision: the hoisted product's input rows converted, [T*N] of them
    float* low_scales;       // and their int8 scales
    T *packed_ih, *spill;    // the input product on the microkernel: W_ih packed, a spill tile per thread

    ForwardScratch(Carver& cv, const Desc& d, bool train, bool regularized, int threads, int nr,
                   ThreadCtx<T>* tc, bool prepacked = false, bool reduced = false, int own_ih_threads = 0) {
        const i64 G = cell_gates(d), GH = G * d.H, K = state_size(d), NK = d.N * K, NH = d.N * d.H;
        const i64 nblk = blocks(d, nr), nblk_k = state_blocks(d, nr);
        const bool xp_in_cache = train && cell_cache_gates(d) > 0;
        for (i64 dir = 0; dir < d.D; ++dir) {
            xp[dir] = xp_in_cache ? nullptr : cv.take<T>(d.T * d.N * GH);
            packed[dir] = cv.take<T>(prepacked ? 0 : G * nblk * K * nr);
            packed_hr[dir] = cv.take<T>(d.P > 0 && !prepacked ? nblk_k * d.H * nr : 0);
            bias[dir] = cv.take<T>(GH);
            bhn[dir] = cv.take<T>(d.H);
            hbuf[dir] = cv.take<T>(2 * NK);
            hr[dir] = cv.take<T>(regularized ? 2 * NK : 0);
            c[dir] = cv.take<T>(cell_has_c(d) ? NH : 0);
            rh[dir] = cv.take<T>(second_gemm(cell_info(d)) && !train ? NH : 0);  // r*h of a second GEMM
            m[dir] = cv.take<T>(d.P > 0 && !train ? NH : 0);
            ln_raw[dir] = cv.take<T>(ln_hh(d) ? d.N * GH : 0);
            ln_work[dir] = cv.take<T>(ln_hh(d) ? NH : 0);
            w_eff[dir] = cv.take<T>(regularized ? GH * K : 0);
            stats[dir] = cv.take<double>(ln_hh(d) ? 2 * d.N * nblk * 2 : 0);
        }
        zrows = cv.take<T>(regularized ? K + d.H : 0);
        ybuf = cv.take<T>(!train && d.L > 1 ? 2 * d.T * d.N * d.D * K : 0);
        bn_work = cv.take<double>(bn_ih(d) ? 2 * GH : 0);
        const i64 widest_input = d.L > 1 ? std::max(d.C, d.D * K) : d.C;
        low_rows = cv.take<std::uint8_t>(reduced ? d.T * d.N * ReducedMatrix::max_row_bytes(widest_input) : 0);
        low_scales = cv.take<float>(reduced ? d.T * d.N : 0);
        packed_ih = cv.take<T>(own_ih_threads ? (GH + nr - 1) / nr * nr * widest_input : 0);
        spill = cv.take<T>(own_ih_threads * kInputRows * kInputPanels * nr);
        carve_threads(cv, d, threads, nr, tc, reduced);
    }
};

template <class T>
struct BackwardScratch {
    T *dgates[2], *packed[2], *packed_hr[2], *dh[2], *dc[2], *dproj[2], *ln_work[2], *w_eff[2], *dw[2], *ymask[2],
        *dybuf, *gather;
    double* stats[2];
    double* bn_work;  // batch norm column sums [2, G*H]
    // bf16 compute: per direction W_hh (and W_hr) rounded; a direction's gate gradients rounded
    // (their layout); the other rounded operands of a GEMM.
    T *low_w[2], *low_dg, *low_a, *low_b;

    BackwardScratch(Carver& cv, const Desc& d, bool retain, bool regularized, int threads, int nr,
                    ThreadCtx<T>* tc, bool bf16 = false) {
        const i64 GH = cell_gates(d) * d.H, K = state_size(d), NK = d.N * K, NH = d.N * d.H;
        const i64 nblk = blocks(d, nr), nblk_k = state_blocks(d, nr);
        const i64 ld = row_layout(d).ld;
        const bool own_dgates = ld == 0 || retain;  // else the gradients overwrite the cached gates
        for (i64 dir = 0; dir < d.D; ++dir) {
            dgates[dir] = own_dgates ? cv.take<T>(d.T * d.N * (ld ? ld : d.H)) : nullptr;
            packed[dir] = cv.take<T>(nblk_k * GH * nr);
            packed_hr[dir] = cv.take<T>(d.P > 0 ? nblk * d.P * nr : 0);
            dh[dir] = cv.take<T>(NK);
            dc[dir] = cv.take<T>(cell_has_c(d) ? NH : 0);
            dproj[dir] = cv.take<T>(d.P > 0 ? d.T * NK : 0);
            ln_work[dir] = cv.take<T>(ln_hh(d) ? NH : 0);
            w_eff[dir] = cv.take<T>(regularized ? GH * K : 0);
            dw[dir] = cv.take<T>(regularized ? GH * K : 0);
            ymask[dir] = cv.take<T>(regularized ? (d.T + 1) * NK : 0);
            stats[dir] = cv.take<double>(ln_hh(d) ? 2 * d.N * nblk * 2 : 0);
            low_w[dir] = cv.take<T>(bf16 ? GH * K + d.P * d.H : 0);
        }
        // The operands of backward_walk's GEMMs: the gate gradients [T*N, ld] (A, rounded once per
        // direction), a projection's [T*N, K] or the first steps' rows [N, G*H] (A); the inputs
        // [T*N, C or D*K or H] or W_ih [G*H, C or D*K] (B).
        const i64 TN = d.T * d.N;
        low_dg = cv.take<T>(bf16 ? TN * (ld ? ld : d.H) : 0);
        low_a = cv.take<T>(bf16 ? std::max(d.P > 0 ? TN * K : 0, d.N * GH) : 0);
        low_b = cv.take<T>(bf16 ? std::max(TN, GH) * std::max({d.C, d.D * K, d.H}) : 0);
        dybuf = cv.take<T>(d.L > 1 ? 2 * d.T * d.N * d.D * K : 0);
        gather = cv.take<T>(d.N * GH);
        bn_work = cv.take<double>(bn_ih(d) ? 2 * GH : 0);
        carve_threads(cv, d, threads, nr, tc);
    }
};

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

// In elements of either dtype: carved as float, whose regions round up to 16 elements where
// double's round up to 8, so twice the float bytes bound the double bytes.
namespace {
// Elements a batch-split part of `rows` rows copies its rows into (forward()): x and the output
// sequence, the initial and final states.
i64 row_copy_elements(const Desc& d, i64 rows) {
    const i64 K = state_size(d), S = d.L * d.D;
    return d.T * rows * (d.C + d.D * K) + 2 * S * rows * (K + (cell_has_c(d) ? d.H : 0));
}
}  // namespace

std::int64_t forward_scratch_elements(const Desc& d, bool training, int threads, int nr, bool regularized) {
    Carver cv(nullptr, kAlign, true);
    ForwardScratch<float>(cv, d, training, regularized, threads, nr, nullptr, false, false, own_input_threads(d, false));
    // inference that may split the batch's rows (forward()): the parts' copies of their rows
    const bool may_split = !training && !regularized && d.D == 1 && d.N >= 8;
    return std::int64_t(cv.used() / sizeof(float)) + (may_split ? row_copy_elements(d, d.N) : 0);
}

std::int64_t backward_scratch_elements(const Desc& d, bool retain, int threads, int nr, bool regularized) {
    Carver cv(nullptr, kAlign, true);
    BackwardScratch<float>(cv, d, retain, regularized, threads, nr, nullptr);
    return std::int64_t(cv.used() / sizeof(float));
}

int saturation_stats(const Desc& d) { return cell_info(d).n_saturation; }

template <class T>
NonFinite forward_stats(const Desc& d, const T* cache, const std::int64_t* lengths, bool dropout, double* saturation) {
    const CacheLayout lay(d, dropout);
    const i64 T_ = d.T, N = d.N, H = d.H, K = state_size(d), D = d.D, DK = D * K, S = saturation_stats(d);
    const i64 ld = lay.row.ld;
    // What each statistic counts and on which cached block (the cell table; -1: the output).
    const CellInfo& cell = cell_info(d);
    Saturation kind[kMaxGates];
    for (i64 q = 0; q < S; ++q) kind[q] = resolve(cell.saturation[q], d.activation);
    // Saturated units of one row, and in `bad` the number of NaN/Inf (v - v is 0 only for finite
    // v). Integer reductions of comparisons: the compiler vectorizes them.
    auto count_row = [H](Saturation k, const T* v, i64& bad) {
        i64 c = 0, nf = 0;
        if (k == Saturation::Sigmoid)
            for (i64 j = 0; j < H; ++j) c += (v[j] < T(0.01)) | (v[j] > T(0.99)), nf += !(v[j] - v[j] == T(0));
        else if (k == Saturation::Tanh)
            for (i64 j = 0; j < H; ++j) c += (v[j] < T(-0.99)) | (v[j] > T(0.99)), nf += !(v[j] - v[j] == T(0));
        else
            for (i64 j = 0; j < H; ++j) c += v[j] <= T(0), nf += !(v[j] - v[j] == T(0));
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
                    for (i64 q = 0; q < S; ++q) {
                        const int block = cell.saturation_block[q];
                        count[q] += count_row(kind[q], block >= 0 ? g + block * H : y, nonfinite);
                    }
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
    return nz.rec_mask || nz.zh_mask || nz.zc_mask || nz.zh_rate > T(0) || nz.zc_rate > T(0) || nz.cand_mask;
}
}  // namespace

namespace {

// What a CPU call holds (its cell's kernels in the form the call needs, its threads) and the
// arithmetic of the skeleton on the CPU: BLAS GEMMs and host loops.
template <class T>
struct CpuOps {
    const Desc& d;
    const Noise<T>& nz;
    T* cache;
    const KernelSet<T>& ks;
    const CellKernels<T>& k;
    const bool regularized;
    const ThreadPlan plan;
    ThreadCtx<T> tc_inline[4];  // the usual thread counts need no allocation (streaming steps)
    std::vector<ThreadCtx<T>> tc_more;
    ThreadCtx<T>* tc;

    CpuOps(const Desc& d_, const Noise<T>& nz_, T* cache_, bool input_in_steps = false)
        : d(d_), nz(nz_), cache(cache_), ks(active_kernels<T>()), k(cell_of(ks, d_, cell_noise(nz_))),
          regularized(has_noise(nz_)), plan(plan_threads(d_, ks.nr, input_in_steps)),
          tc_more(plan.total() > 4 ? std::size_t(plan.total()) : 0),
          tc(plan.total() > 4 ? tc_more.data() : tc_inline) {}
    void gemm(bool ta, bool tb, i64 m, i64 n, i64 k, T alpha, const T* A, i64 lda, const T* B, i64 ldb, T beta, T* C,
              i64 ldc) {
        fastrnn::gemm<T>(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
    }
    void input_gemm(i64, i64 m, i64 n, i64 k, const T* X, const T* W, T* C, i64 ldc) {
        gemm(false, true, m, n, k, T(1), X, k, W, k, T(0), C, ldc);
    }
    void column_sums(const T* a, i64 rows, i64 cols, i64 lda, T* out) { add_column_sums(a, rows, cols, lda, out); }
    void copy(T* dst, const T* src, i64 n) { std::memcpy(dst, src, sizeof(T) * std::size_t(n)); }
    void copy_or_zero(T* dst, const T* src, i64 n) { fastrnn::copy_or_zero(dst, src, n); }
    void multiply(const T* a, const T* m, T* out, i64 n) {
        for (i64 i = 0; i < n; ++i) out[i] = a[i] * m[i];
    }
    void gather_first_steps(const T* dg, i64 ld_dg, i64 rows, const i64* lengths, bool reverse, T* out) {
        for (i64 n = 0; n < d.N; ++n) {
            const i64 t0 = !reverse ? 0 : (lengths ? lengths[n] - 1 : d.T - 1);
            std::memcpy(out + n * rows, dg + (t0 * d.N + n) * ld_dg, sizeof(T) * std::size_t(rows));
        }
    }
    void fold_bias(const LayerWeights<T>& w, T* bias, T* bhn) { fastrnn::fold_bias(d, w, bias, bhn); }
};

// A forward call on the CPU: the scratch (one allocation); per direction the input
// normalization, W_hh packed (or the plan's packed copy) and the variants' pointers.
template <class T>
struct CpuForward : CpuOps<T> {
    using Base = CpuOps<T>;
    using Base::d, Base::nz, Base::cache, Base::ks, Base::k, Base::regularized, Base::plan, Base::tc;
    const PackedWeights<T>* pre;
    const bool in_place;  // the recurrent products read W_hh (W_hr) row-major, in place: nothing packed
    const ReducedWeights* low;  // int8 or bf16 inference: every product on the reduced weights
    // Threads of the hoisted input products on the microkernel (gemm.h's input_gemm), or 0 for
    // BLAS: decided once, the scratch is sized for it.
    const int own_ih_threads;
    Scratch buf;
    Carver carver;
    ForwardScratch<T> ws;

    CpuForward(const Desc& d_, const Noise<T>& nz_, const PackedWeights<T>* pre_, bool in_place_, T* cache_,
               const ReducedWeights* low_ = nullptr, bool own_scratch = false)
        : Base(d_, nz_, cache_, in_place_), pre(pre_), in_place(in_place_), low(low_),
          own_ih_threads(own_input_threads(d_, low_ != nullptr)), buf(size(), own_scratch),
          carver(buf.p, kAlign, true),
          ws(carver, d_, cache_ != nullptr, regularized, plan.total(), ks.nr, tc, pre_ || in_place_ || low_,
             low_ != nullptr, own_ih_threads) {
        if (regularized && !nz.zh_mask && !nz.zc_mask) {  // zoneout's expected update (inference)
            const i64 K = state_size(d);
            for (i64 j = 0; j < K; ++j) ws.zrows[j] = nz.zh_rate;
            for (i64 j = 0; j < d.H; ++j) ws.zrows[K + j] = nz.zc_rate;
        }
    }
    std::size_t size() const {
        return bytes(d, cache != nullptr, regularized, plan.total(), ks.nr, pre || in_place || low, low != nullptr,
                     own_ih_threads);
    }
    static std::size_t bytes(const Desc& d, bool train, bool regularized, int threads, int nr, bool prepacked,
                             bool reduced, int own_ih_threads) {
        Carver sizing(nullptr, kAlign, true);
        ForwardScratch<T>(sizing, d, train, regularized, threads, nr, nullptr, prepacked, reduced, own_ih_threads);
        return sizing.used();
    }

    // Reduced precision: X converted per row (int8: quantized), then the product on the reduced
    // W_ih, rows split over the threads (each row's result is the same whatever the split).
    void input_gemm(i64 s_idx, i64 m, i64 n, i64 k, const T* X, const T* W, T* C, i64 ldc) {
        if constexpr (std::is_same_v<T, float>) {
            if (low) {
                const ReducedMatrix& w = low->w_ih[std::size_t(s_idx)];
                const i64 bytes = w.row_bytes(), panels = (n + ReducedMatrix::kPanel - 1) / ReducedMatrix::kPanel;
                const auto job = [&](int tid, int threads) {
                    const i64 r0 = m * tid / threads, r1 = m * (tid + 1) / threads;
                    w.convert(r1 - r0, X + r0 * k, k, ws.low_rows + r0 * bytes, ws.low_scales + r0);
                    w.product(r1 - r0, ws.low_rows + r0 * bytes, ws.low_scales + r0, 0, panels, n, C + r0 * ldc, ldc,
                              false);
                };
                const double ops = 2.0 * double(m) * double(n) * double(k);
                parallel_run(int(std::min<double>(get_num_threads(), std::max(1.0, ops / 2e6))), std::ref(job),
                             "reduced input product");
                return;
            }
        }
        if (own_ih_threads) {
            ks.pack_forward(W, 1, n, k, ws.packed_ih);
            const i64 row_blocks = (m + kInputRows - 1) / kInputRows;
            const auto job = [&](int tid, int threads) {
                const i64 r0 = std::min(m, row_blocks * tid / threads * kInputRows);
                const i64 r1 = std::min(m, row_blocks * (tid + 1) / threads * kInputRows);
                T* spill = ws.spill + i64(tid) * kInputRows * kInputPanels * ks.nr;
                if (r1 > r0) ks.input_gemm(r1 - r0, k, X + r0 * k, k, ws.packed_ih, n, C + r0 * ldc, ldc, spill);
            };
            parallel_run(own_ih_threads, std::ref(job), "input product");
            return;
        }
        gemm(false, true, m, n, k, T(1), X, k, W, k, T(0), C, ldc);
    }

    // The hoisted input product X W_ih^T of a few rows (a streaming step) with the weights read in
    // place, like the recurrent one: BLAS's gemv is slower at these sizes and starts its threads.
    void gemm(bool ta, bool tb, i64 m, i64 n, i64 k, T alpha, const T* A, i64 lda, const T* B, i64 ldb, T beta, T* C,
              i64 ldc) {
        if (in_place && !ta && tb && alpha == T(1) && beta == T(0) && m <= kStreamInPlaceSlots && ldb == k)
            input_rows(m, n, k, A, lda, B, C, ldc);
        else
            Base::gemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
    }
    // On the recurrence's threads, each computing the gate rows of the units it steps
    // (weight-stationary: a thread reads the same slice of W_ih on every call, as of W_hh):
    // inside the recurrence's region, or in a region of its own when the cell normalizes the
    // whole projection first (LayerNorm, batch norm: every row needs all its columns).
    void input_rows(i64 m, i64 n, i64 k, const T* A, i64 lda, const T* W, T* C, i64 ldc) {
        const i64 H = d.H, G = n / H, nblk = blocks(d, ks.nr);
        if (plan.total() == 1 || d.D != 1 || G * H != n) {
            ks.rows_gemm(n, k, W, m, A, lda, C, ldc, nullptr);
            return;
        }
        input = InputRows<T>{ks.rows_gemm, A, W, C, m, k, lda, ldc, G, H, ks.nr};
        if (!ln_ih(d) && !bn_ih(d)) return;  // run() computes it
        const auto job = [&](int tid, int threads) { input.blocks(nblk * tid / threads, nblk * (tid + 1) / threads); };
        parallel_run(plan.total(), std::ref(job), "input rows");
        input = InputRows<T>{};
    }
    InputRows<T> input;  // deferred into run()

    void prepare(Recurrence<T>& r, const LayerWeights<T>& W, const CacheLayout& lay, i64 l, i64 dir) {
        const bool train = cache != nullptr;
        const i64 s_idx = l * d.D + dir, G = cell_gates(d), H = d.H, GH = G * H, K = state_size(d);
        const i64 NK = d.N * K, TN = d.T * d.N;
        r.packed = in_place || low ? nullptr : pre ? pre->w_hh[std::size_t(s_idx)] : ws.packed[dir];
        r.w_hh = in_place ? W.w_hh : nullptr;
        r.reduced_hh = low ? &low->w_hh[std::size_t(s_idx)] : nullptr;
        if (d.P > 0) {
            r.packed_hr = in_place || low ? nullptr : pre ? pre->w_hr[std::size_t(s_idx)] : ws.packed_hr[dir];
            r.w_hr = in_place ? W.w_hr : nullptr;
            r.reduced_hr = low ? &low->w_hr[std::size_t(s_idx)] : nullptr;
            r.m = train ? r.gates + lay.row.m : ws.m[dir];
            r.ld_m = train ? r.ld_gates : H;
        }
        r.peep = W.w_peep;
        r.ln_hh = W.ln_hh; r.ln_c_w = W.ln_c_w; r.ln_c_b = W.ln_c_b;
        r.stats = ws.stats[dir]; r.ln_raw = ws.ln_raw[dir]; r.ln_work = ws.ln_work[dir];
        set_zoneout(r, d, nz, s_idx, ws.zrows);
        r.act = d.activation;
        r.cmask = nz.cand_mask ? nz.cand_mask + s_idx * d.N * H : nullptr;
        // The hoisted projection normalized where the cell does (LayerNorm per row, batch norm
        // per column over the valid rows), W_hh packed for the microkernel.
        if (ln_ih(d)) ks.ln_rows(r.gates, TN, r.ld_gates, GH, W.ln_ih, lay.row.xhat_ih, lay.row.rstd, train);
        if (bn_ih(d))
            ks.bn_rows(r.gates, d.T, d.N, r.lengths, r.ld_gates, GH, W.ln_ih, W.bn_mean, W.bn_var, d.bn_momentum,
                       train ? cache + lay.bn_rstd(l, dir) : nullptr, lay.row.xhat_ih, train && !d.bn_frozen,
                       ws.bn_work);
        if (!pre && !in_place && !low) {
            const T* w_hh =
                effective_w_hh(W.w_hh, nz.w_mask ? nz.w_mask + s_idx * GH * K : nullptr, GH * K, ws.w_eff[dir]);
            ks.pack_forward(w_hh, G, H, K, ws.packed[dir]);
            if (d.P > 0) ks.pack_forward(W.w_hr, 1, K, H, ws.packed_hr[dir]);
        }
        if (nz.rec_mask) {  // recurrent dropout: the GEMMs read h * mask
            r.rmask = nz.rec_mask + s_idx * NK;
            r.hr = ws.hr[dir];
            for (i64 i = 0; i < NK; ++i) r.hr[i] = r.hbuf[i] * r.rmask[i];
        }
    }
    void run(Recurrence<T>* rec, bool train) {
        run_layer(k, true, train, rec, d.D, plan, tc, blocks(d, ks.nr), state_blocks(d, ks.nr),
                  input.rows_gemm ? &input : nullptr);
        input = InputRows<T>{};
    }
};

// A backward call on the CPU: per direction W_hh packed for the transposed product, the
// variants' pointers, per-thread diagnostics reduced in thread order; the gradients the variants
// add (input normalization, recurrent dropout, DropConnect, projection, peepholes).
template <class T>
struct CpuBackward : CpuOps<T> {
    using Base = CpuOps<T>;
    using Base::d, Base::nz, Base::cache, Base::ks, Base::k, Base::regularized, Base::plan, Base::tc;
    const BackwardOptions<T>& opt;
    Scratch buf;
    Carver carver;
    BackwardScratch<T> ws;
    std::vector<T> zrate_rows;  // zoneout rates (a backward through the expected update)
    std::vector<double> diag_h, diag_c, diag_r, diag_s, diag_rows;  // per thread [D, T], reduced in thread order

    CpuBackward(const Desc& d_, const BackwardOptions<T>& opt_, T* cache_)
        : Base(d_, opt_.noise, cache_), opt(opt_), buf(size()), carver(buf.p, kAlign, true),
          ws(carver, d_, opt_.retain, regularized, plan.total(), ks.nr, tc, opt_.bf16) {
        const i64 K = state_size(d), H = d.H, D = d.D, T_ = d.T;
        if (regularized && !nz.zh_mask && !nz.zc_mask && (nz.zh_rate > T(0) || nz.zc_rate > T(0))) {
            zrate_rows.assign(std::size_t(K + H), T(0));
            std::fill(zrate_rows.begin(), zrate_rows.begin() + K, nz.zh_rate);
            std::fill(zrate_rows.begin() + K, zrate_rows.end(), nz.zc_rate);
        }
        if (opt.diag.grad_h_sq) {
            const std::size_t n = std::size_t(plan.total() * D * T_);
            diag_h.assign(n, 0.0);
            if (cell_has_c(d) && opt.diag.grad_c_sq) diag_c.assign(n, 0.0);
            if (opt.diag.carried_sq) diag_r.assign(n, 0.0);
            if (opt.diag.carried_sq) diag_s.assign(n, 0.0);
            if (opt.diag.carried_sq) diag_rows.assign(std::size_t(plan.total() * 3 * d.N), 0.0);
        }
    }
    std::size_t size() const {
        Carver sizing(nullptr, kAlign, true);
        BackwardScratch<T>(sizing, d, opt.retain, regularized, plan.total(), ks.nr, nullptr, opt.bf16);
        return sizing.used();
    }

    // bf16 compute: the GEMMs outside the time loop on operands rounded to bf16 (their products
    // are exact in float32, which accumulates them), as a bf16 GEMM with float32 accumulation.
    void gemm(bool ta, bool tb, i64 m, i64 n, i64 k, T alpha, const T* A, i64 lda, const T* B, i64 ldb, T beta, T* C,
              i64 ldc) {
        if (opt.bf16) {
            A = rounded(A, ta ? k : m, ta ? m : k, lda, ws.low_a);
            B = rounded(B, tb ? n : k, tb ? k : n, ldb, ws.low_b);
        }
        fastrnn::gemm<T>(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
    }
    // rows x cols of `a` (row stride lda) rounded to bf16: inside the direction's gate gradients,
    // from their copy rounded once (row stride kept); else into `out` (lda becomes cols).
    const T* rounded(const T* a, i64 rows, i64 cols, i64& lda, T* out) {
        const auto at = [](const T* p) { return reinterpret_cast<std::uintptr_t>(p); };
        const i64 whole = d.T * d.N * dg_ld;
        if (dg && lda == dg_ld && at(a) >= at(dg) && at(a + (rows - 1) * lda + cols) <= at(dg + whole)) {
            if (!dg_rounded) round_to_bf16(dg, whole, ws.low_dg);
            dg_rounded = true;
            return ws.low_dg + (a - dg);
        }
        for (i64 i = 0; i < rows; ++i) round_to_bf16(a + i * lda, cols, out + i * cols);
        lda = cols;
        return out;
    }
    const T* dg = nullptr;  // bf16: the gate gradients of the direction whose weight gradients run
    i64 dg_ld = 0;
    bool dg_rounded = false;
    // W rounded to bf16 (bf16 compute), else W itself.
    const T* low_weights(const T* w, i64 n, T* out) const {
        if (!opt.bf16) return w;
        round_to_bf16(w, n, out);
        return out;
    }

    void prepare(Recurrence<T>& r, const LayerWeights<T>& W, const LayerGrads<T>& Gr, const CacheLayout& lay, i64 l,
                 i64 dir) {
        const i64 s_idx = l * d.D + dir, GH = cell_gates(d) * d.H, K = state_size(d), NK = d.N * K;
        r.packed = ws.packed[dir];
        if (d.P > 0) {
            r.packed_hr = ws.packed_hr[dir];
            r.m = r.gates + lay.row.m;
            r.ld_m = r.ld_dgates;
            r.dproj = ws.dproj[dir];
            ks.pack_backward(low_weights(W.w_hr, K * d.H, ws.low_w[dir] + GH * K), K, d.H, ws.packed_hr[dir]);
        }
        r.peep = W.w_peep;
        r.ln_hh = W.ln_hh; r.ln_c_w = W.ln_c_w; r.ln_c_b = W.ln_c_b;
        r.g_ln_hh = Gr.ln_hh; r.g_ln_c_w = Gr.ln_c_w; r.g_ln_c_b = Gr.ln_c_b;
        r.stats = ws.stats[dir]; r.ln_work = ws.ln_work[dir];
        set_zoneout(r, d, nz, s_idx, zrate_rows.empty() ? nullptr : zrate_rows.data());
        r.rmask = nz.rec_mask ? nz.rec_mask + s_idx * NK : nullptr;
        r.cmask = nz.cand_mask ? nz.cand_mask + s_idx * d.N * d.H : nullptr;
        const T* w_hh = effective_w_hh(W.w_hh, nz.w_mask ? nz.w_mask + s_idx * GH * K : nullptr, GH * K, ws.w_eff[dir]);
        ks.pack_backward(low_weights(w_hh, GH * K, ws.low_w[dir]), GH, K, ws.packed[dir]);
    }
    void run(Recurrence<T>* rec) {
        const i64 DT = d.D * d.T;
        for (int i = 0; i < plan.total() && !diag_h.empty(); ++i) {
            tc[i].grad_h_sq = diag_h.data() + i * DT;
            tc[i].grad_c_sq = diag_c.empty() ? nullptr : diag_c.data() + i * DT;
            tc[i].carried_sq = diag_r.empty() ? nullptr : diag_r.data() + i * DT;
            tc[i].prev_state_sq = diag_s.empty() ? nullptr : diag_s.data() + i * DT;
            tc[i].rows = diag_rows.empty() ? nullptr : diag_rows.data() + i * 3 * d.N;
        }
        run_layer(k, false, true, rec, d.D, plan, tc, blocks(d, ks.nr), state_blocks(d, ks.nr));
    }
    // This direction's diagnostics records, summed in thread order.
    void finish(const Recurrence<T>& r, i64 dir, i64 s_idx) {
        dg = r.dgates, dg_ld = r.ld_dgates, dg_rounded = false;  // rounded at their first GEMM
        if (diag_h.empty()) return;
        const i64 T_ = d.T;
        auto drain = [&](std::vector<double>& part, double* to, std::size_t at, i64 t) {
            if (part.empty()) return;
            to[s_idx * T_ + t] += part[at];
            part[at] = 0;
        };
        for (int i = 0; i < plan.total(); ++i)
            for (i64 t = 0; t < T_; ++t) {
                const std::size_t at = std::size_t((i * d.D + dir) * T_ + t);
                drain(diag_h, opt.diag.grad_h_sq, at, t);
                drain(diag_c, opt.diag.grad_c_sq, at, t);
                drain(diag_r, opt.diag.carried_sq, at, t);
                drain(diag_s, opt.diag.prev_state_sq, at, t);
            }
    }
    const T* input_grad(const Recurrence<T>& r, const LayerWeights<T>& W, const LayerGrads<T>& Gr,
                        const CacheLayout& lay, i64 l, i64 dir) {
        const i64 TN = d.T * d.N, GH = cell_gates(d) * d.H;
        if (ln_ih(d)) {
            ks.ln_rows_backward(r.gates, r.dgates, TN, r.ld_dgates, GH, W.ln_ih, Gr.ln_ih, lay.row.xhat_ih,
                                lay.row.rstd);
            return r.dgates + lay.row.xhat_ih;
        }
        if (bn_ih(d)) {
            ks.bn_rows_backward(r.gates, r.dgates, d.T, d.N, r.lengths, r.ld_dgates, GH, W.ln_ih,
                                cache + lay.bn_rstd(l, dir), Gr.ln_ih, lay.row.xhat_ih, !d.bn_frozen, ws.bn_work);
            return r.dgates + lay.row.xhat_ih;
        }
        return r.dgates;
    }
    // h_{t-1} as the recurrent GEMM read it: times the recurrent dropout mask.
    RecurrentInput<T> recurrent_input(const Recurrence<T>& r, const T* Yd, i64 ld, i64 s_idx) {
        if (!r.rmask) return {Yd, ld, r.h0};
        const i64 K = state_size(d), NK = d.N * K;
        T* ym = ws.ymask[s_idx % d.D];
        for (i64 t = 0; t < d.T; ++t)
            for (i64 i = 0; i < NK; ++i) ym[t * NK + i] = Yd[t * d.N * ld + (i / K) * ld + i % K] * r.rmask[i];
        T* h0m = ym + d.T * NK;
        for (i64 i = 0; i < NK; ++i) h0m[i] = r.h0[i] * r.rmask[i];
        return {ym, K, h0m};
    }
    // dW_hh, of the masked W_hh under DropConnect (masked again in finish_w_hh_grad).
    T* w_hh_grad(const LayerGrads<T>& Gr, i64, i64 dir) {
        if (!nz.w_mask) return Gr.w_hh;
        std::memset(static_cast<void*>(ws.dw[dir]), 0, sizeof(T) * std::size_t(cell_gates(d) * d.H * state_size(d)));
        return ws.dw[dir];
    }
    void finish_w_hh_grad(const T* dW, const LayerGrads<T>& Gr, i64 s_idx) {
        if (!nz.w_mask) return;
        const i64 n = cell_gates(d) * d.H * state_size(d);
        const T* m = nz.w_mask + s_idx * n;
        for (i64 i = 0; i < n; ++i) Gr.w_hh[i] += dW[i] * m[i];
    }
    void variant_grads(const Recurrence<T>& r, const LayerGrads<T>& Gr, const CacheLayout& lay, i64 dir) {
        if (d.P > 0)  // dW_hr = sum dL/d(W_hr m_t)^T m_t
            gemm(true, false, state_size(d), d.H, d.T * d.N, T(1), r.dproj, state_size(d), r.m, r.ld_m, T(1),
                 Gr.w_hr, d.H);
        if (d.peephole)
            peephole_grads(d, dir, r.lengths, r.dgates, r.ld_dgates, r.c_hist,
                           lay.row.ctil >= 0 ? r.gates + lay.row.ctil : nullptr, r.ld_dgates, r.c0, Gr.w_peep);
    }
};

// Threads of a batch split: inference whose rows are independent (no noise, float weights, one
// direction: two directions already run one per thread without a barrier), each thread running
// the whole stack on its own rows with no barrier at all. Chosen where a step split by units
// would give each thread little work beside its barrier (under 1e6 flops of recurrent product:
// a few microseconds on one core, while a barrier and the cache lines of h crossing between cores
// cost ~1 us), the recurrent weights are small (up to 512 KiB: each core then reads all of them,
// not half), each thread gets at least 4 rows (fewer use the microkernel's registers poorly), and
// the call has ~4e6 flops per thread (waking a pool thread costs tens of microseconds). Measured
// on a Zen 3 at 2 threads (docs/design.md): (T, N, H) = (1000, 8, 64) LSTM 4.2-4.5 ms against
// 4.7-7.3 split by units, GRU 3.05-3.2 against 4.6-4.9; at (200, 16, 128) the GRU (7.9e5 flops)
// 4.3 against 4.3-5.8, the LSTM (1.05e6) a tie or 1-4 % slower; with 16 rows at H = 256, 64 rows
// at H = 128 or 2 rows per thread the units' split was faster (2-10 %).
// Not for streams (they allocate nothing per step) nor where the row copies would pass 256 MiB,
// and only with at least as many threads as the units' split would use at the bar of short
// calls (1.2e5 flops per thread, plan_threads at T = 1): long calls split units from less, but
// steps under 1e6 flops a thread were measured faster split by rows.
template <class T>
int batch_split_threads(const Desc& d, const Noise<T>& nz, bool training, const ReducedWeights* low) {
    if (training || low || has_noise(nz) || nz.cand_mask || d.D != 1) return 1;
    const i64 threads = std::min<i64>(step_threads(), d.N / 4);
    Desc one_step = d;
    one_step.T = 1;
    if (threads < 2 || threads < plan_threads(one_step, active_kernels<T>().nr).total()) return 1;
    if (double(row_copy_elements(d, d.N)) * sizeof(T) > double(256 << 20)) return 1;
    // the parts' input products take the whole call's path (the microkernel's rows are the same
    // on any number of threads; a switch to BLAS would change their last bits)
    if (own_input_gemm() && d.T * d.N >= kOwnInputMinRows && d.T * (d.N / threads) < kOwnInputMinRows) return 1;
    const double G = cell_gates(d), K = double(state_size(d)), N = double(d.N);
    if (G * double(d.H) * K * sizeof(T) > double(512 << 10)) return 1;
    if (2.0 * N * G * double(d.H) * K / double(threads) >= 1e6) return 1;
    const double flops = 2.0 * double(d.T) * N * G * double(d.H) * (double(d.C) + K * double(d.L));
    return flops / double(threads) >= 4e6 ? int(threads) : 1;
}

// Rows [n0, n1) of a [B, N, W] array into a packed [B, n1 - n0, W] one, and back.
template <class T>
void gather_rows(const T* full, T* rows, i64 B, i64 N, i64 W, i64 n0, i64 n1) {
    for (i64 b = 0; b < B; ++b)
        std::memcpy(rows + b * (n1 - n0) * W, full + (b * N + n0) * W, sizeof(T) * std::size_t((n1 - n0) * W));
}
template <class T>
void scatter_rows(const T* rows, T* full, i64 B, i64 N, i64 W, i64 n0, i64 n1) {
    for (i64 b = 0; b < B; ++b)
        std::memcpy(full + (b * N + n0) * W, rows + b * (n1 - n0) * W, sizeof(T) * std::size_t((n1 - n0) * W));
}

}  // namespace

// Which arrangement of the weights a forward call reads: `low` (int8, bf16) needs a float32 plan
// without DropConnect, packed for the active ISA (int8: inference only); a plan's packed copy for
// another ISA, or with DropConnect, is not used; training and DropConnect pack W_hh themselves.
template <class T>
void settle_weights(const KernelSet<T>& ks, const Noise<T>& nz, bool train, const PackedWeights<T>*& pre,
                    bool& in_place, const ReducedWeights* low) {
    if (low && (nz.w_mask || !std::is_same_v<T, float> || low->nr != ks.nr))
        throw std::invalid_argument("int8/bf16: calls of a float32 plan without weight_drop, packed for the active ISA");
    if (low && train && low->precision != Precision::BF16)
        throw std::invalid_argument("int8: inference only (training calls compute in float32 or bf16)");
    if (low) pre = nullptr, in_place = false;
    if (pre && (pre->nr != ks.nr || nz.w_mask)) pre = nullptr;
    if (train || nz.w_mask) in_place = false;  // training: the backward needs the packed layout anyway
}

template <class T>
void forward(const Desc& d, const LayerWeights<T>* w, const T* x, const T* h0, const T* c0,
             const std::int64_t* lengths, const T* masks, T* out, T* h_n, T* c_n, T* cache, const Noise<T>& nz,
             const PackedWeights<T>* pre, bool in_place, const ReducedWeights* low, bool split_rows) {
    if (const int parts = split_rows ? batch_split_threads(d, nz, cache != nullptr, low) : 1; parts > 1) {
        // Each part copies its rows in and out (a few percent of the time): the GEMMs and kernels
        // take [T, N, *] arrays whole.
        const i64 K = state_size(d), S = d.L * d.D, W = d.D * K, has_c = cell_has_c(d);
        std::vector<std::exception_ptr> failed{std::size_t(parts)};  // a pool job must not throw
        const auto job = [&](int tid, int n) {
            const i64 n0 = d.N * tid / n, n1 = d.N * (tid + 1) / n, R = n1 - n0;
            try {
                OneThreadScope one;
                Desc part = d;
                part.N = R;
                const std::unique_ptr<T[]> buf(new T[std::size_t(row_copy_elements(d, R))]);
                T* xs = buf.get();
                T *ys = xs + d.T * R * d.C, *hs = ys + d.T * R * W, *cs = hs + S * R * K;
                T *hn = cs + has_c * S * R * d.H, *cn = hn + S * R * K;
                gather_rows(x, xs, d.T, d.N, d.C, n0, n1);
                if (h0) gather_rows(h0, hs, S, d.N, K, n0, n1);
                if (c0 && has_c) gather_rows(c0, cs, S, d.N, d.H, n0, n1);
                forward(part, w, xs, h0 ? hs : nullptr, c0 && has_c ? cs : nullptr, lengths ? lengths + n0 : nullptr,
                        masks, ys, hn, has_c ? cn : nullptr, cache, nz, pre, in_place, low, false);
                scatter_rows(ys, out, d.T, d.N, W, n0, n1);
                if (h_n) scatter_rows(hn, h_n, S, d.N, K, n0, n1);
                if (c_n && has_c) scatter_rows(cn, c_n, S, d.N, d.H, n0, n1);
            } catch (...) {
                failed[std::size_t(tid)] = std::current_exception();
            }
        };
        one_blas_thread();  // from the calling thread, before the parts' GEMMs (blas.h)
        parallel_run(parts, std::ref(job), "batch");
        for (const auto& e : failed)
            if (e) std::rethrow_exception(e);
        return;
    }
    settle_weights(active_kernels<T>(), nz, cache != nullptr, pre, in_place, low);
    CpuForward<T> backend(d, nz, pre, in_place, cache, low);  // scratch allocated once: nothing inside the time loop
    forward_walk(backend, d, w, x, h0, c0, lengths, masks, out, h_n, c_n, cache);
}

// A call's setup made once for calls of one shape: the backend (kernels, thread plan, thread
// contexts, the weights arrangement) and its workspace, carved once. `nz` is the caller's (a
// stream's member, unchanged).
template <class T>
struct KeptForward {
    const Desc d;  // the backend's descriptor (it holds a reference)
    const int threads;  // step_threads() the plan was made for
    CpuForward<T> backend;
    int misses = 0;  // calls in a row that did not fit

    KeptForward(const Desc& d_, const Noise<T>& nz, const PackedWeights<T>* pre, bool in_place,
                const ReducedWeights* low)
        : d(d_), threads(step_threads()), backend(d, nz, pre, in_place, nullptr, low, /*own_scratch=*/true) {}
    // Everything the setup was made from: the shape (a stream's calls differ in T only), the
    // caller's weights arrangement, the ISA, the threads a step may take now and the input-product
    // choice (set_input_gemm, set_num_threads).
    bool fits(const Desc& c, const Noise<T>& nz, const PackedWeights<T>* pre, bool in_place,
              const ReducedWeights* low) const {
        const CpuForward<T>& b = backend;
        return c.T == d.T && c.N == d.N && c.C == d.C && c.H == d.H && c.L == d.L && c.D == d.D && c.P == d.P &&
               c.cell == d.cell && &nz == &b.nz && pre == b.pre && in_place == b.in_place && low == b.low &&
               &b.ks == &active_kernels<T>() && threads == step_threads() &&
               b.own_ih_threads == own_input_threads(c, low != nullptr);
    }
};

template <class T>
void KeptForwardDeleter<T>::operator()(KeptForward<T>* p) const { delete p; }

template <class T>
void forward_repeated(KeptForwardPtr<T>& kept, const Desc& d, const LayerWeights<T>* w, const T* x, const T* h0,
                      const T* c0, const std::int64_t* lengths, T* out, T* h_n, T* c_n, const Noise<T>& nz,
                      const PackedWeights<T>* pre, bool in_place, const ReducedWeights* low) {
    const KernelSet<T>& ks = active_kernels<T>();
    settle_weights(ks, nz, false, pre, in_place, low);
    if (kept && kept->fits(d, nz, pre, in_place, low)) {
        kept->misses = 0;
    } else {
        // A call that does not fit runs on the thread's scratch, as any call; the setup is made
        // again for the second such call in a row (a stream whose chunk length alternates keeps
        // one setup and allocates nothing), and never above kKeptForwardBytes.
        const std::size_t bytes =
            CpuForward<T>::bytes(d, false, has_noise(nz), plan_threads(d, ks.nr, in_place).total(), ks.nr,
                                 pre || in_place || low, low != nullptr, own_input_threads(d, low != nullptr));
        if ((kept && ++kept->misses < 2) || bytes > std::size_t(kKeptForwardBytes)) {
            forward<T>(d, w, x, h0, c0, lengths, nullptr, out, h_n, c_n, nullptr, nz, pre, in_place, low, false);
            return;
        }
        kept.reset();  // its workspace first
        kept.reset(new KeptForward<T>(d, nz, pre, in_place, low));
    }
    forward_walk(kept->backend, kept->d, w, x, h0, c0, lengths, static_cast<const T*>(nullptr), out, h_n, c_n,
                 static_cast<T*>(nullptr));
}

template <class T>
void backward(const Desc& d, const LayerWeights<T>* w, const T* x, const std::int64_t* lengths, const T* masks,
              T* cache, const T* grad_out, const T* grad_h_n, const T* grad_c_n, T* grad_x, T* grad_h0,
              T* grad_c0, const LayerGrads<T>* g, const BackwardOptions<T>& opt) {
    if (opt.bf16 && !std::is_same_v<T, float>) throw std::invalid_argument("bf16 compute takes a float32 plan");
    CpuBackward<T> backend(d, opt, cache);
    backward_walk(backend, d, w, x, lengths, masks, cache, grad_out, grad_h_n, grad_c_n, grad_x, grad_h0, grad_c0, g,
                  opt.bptt_clip);
}

template void forward<float>(const Desc&, const LayerWeights<float>*, const float*, const float*, const float*,
                             const std::int64_t*, const float*, float*, float*, float*, float*, const Noise<float>&,
                             const PackedWeights<float>*, bool, const ReducedWeights*, bool);
template void forward<double>(const Desc&, const LayerWeights<double>*, const double*, const double*, const double*,
                              const std::int64_t*, const double*, double*, double*, double*, double*,
                              const Noise<double>&, const PackedWeights<double>*, bool, const ReducedWeights*,
                              bool);
template struct KeptForwardDeleter<float>;
template struct KeptForwardDeleter<double>;
template void forward_repeated<float>(KeptForwardPtr<float>&, const Desc&, const LayerWeights<float>*, const float*,
                                      const float*, const float*, const std::int64_t*, float*, float*, float*,
                                      const Noise<float>&, const PackedWeights<float>*, bool, const ReducedWeights*);
template void forward_repeated<double>(KeptForwardPtr<double>&, const Desc&, const LayerWeights<double>*,
                                       const double*, const double*, const double*, const std::int64_t*, double*,
                                       double*, double*, const Noise<double>&, const PackedWeights<double>*, bool,
                                       const ReducedWeights*);
template void backward<float>(const Desc&, const LayerWeights<float>*, const float*, const std::int64_t*,
                              const float*, float*, const float*, const float*, const float*, float*, float*, float*,
                              const LayerGrads<float>*, const BackwardOptions<float>&);
template void backward<double>(const Desc&, const LayerWeights<double>*, const double*, const std::int64_t*,
                               const double*, double*, const double*, const double*, const double*, double*, double*,
                               double*, const LayerGrads<double>*, const BackwardOptions<double>&);

}  // namespace fastrnn
