// The CUDA driver: the driver skeleton of csrc/core/skeleton.h (shared with the CPU driver) on a
// CUDA stream. Per layer: the hoisted input projection for all T*N rows (one GEMM), then the
// recurrence (a fused kernel per step, or one persistent kernel for all steps), then for BPTT the
// weight gradients and dx as GEMMs over all steps. Included by driver_f32.cu and driver_f64.cu
// (one dtype each, so nvcc compiles them in parallel) and by runtime.cu; built by nvcc, or by the
// host compiler for the emulator.
#pragma once
#include "driver.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "../core/skeleton.h"
#include "kernels.h"

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

namespace fastrnn {
namespace cuda {

// ---------------------------------------------------------------- runtime

struct DeviceProps {
    int sms = 0;
    std::size_t smem_optin = 0;  // largest dynamic shared memory a block may request
    bool cooperative = false;    // cooperative launches (grid barriers) supported
};

#if defined(__CUDACC__)

inline void check(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return;
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();  // clear the sticky-free error so the next call does not report it again
        throw std::bad_alloc();
    }
    throw std::runtime_error(std::string("fastrnn CUDA: ") + what + ": " + cudaGetErrorName(e) + " (" +
                             cudaGetErrorString(e) + ")");
}
inline cudaStream_t native(Stream s) { return static_cast<cudaStream_t>(s); }

template <class K>
__global__ void kernel_entry(const typename K::Args a) {
    K::run(a);
}

template <class K>
void allow_smem(std::size_t smem) {
    if (smem > (std::size_t(48) << 10))
        check(cudaFuncSetAttribute(kernel_entry<K>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
              "cudaFuncSetAttribute");
}

// Returns false only when a cooperative launch is refused because its blocks cannot all be
// resident (e.g. the GPU is shared under MPS): nothing was enqueued and the caller falls back.
template <class K>
bool launch(i64 blocks, int threads, std::size_t smem, Stream s, const typename K::Args& a, bool cooperative = false) {
    if (blocks <= 0) return true;
    allow_smem<K>(smem);
    if (cooperative) {
        void* args[] = {const_cast<typename K::Args*>(&a)};
        const cudaError_t e = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel_entry<K>),
                                                          dim3(unsigned(blocks)), dim3(unsigned(threads)), args, smem,
                                                          native(s));
        if (e == cudaErrorCooperativeLaunchTooLarge) {
            cudaGetLastError();
            return false;
        }
        check(e, "cudaLaunchCooperativeKernel");
    } else {
        kernel_entry<K><<<dim3(unsigned(blocks)), dim3(unsigned(threads)), smem, native(s)>>>(a);
        check(cudaGetLastError(), "kernel launch");
    }
    return true;
}

inline DeviceProps query_props(int dev) {
    DeviceProps p;
    int v = 0;
    check(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
    p.sms = v;
    check(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
    p.smem_optin = std::size_t(v);
    check(cudaDeviceGetAttribute(&v, cudaDevAttrCooperativeLaunch, dev), "cudaDeviceGetAttribute");
    p.cooperative = v != 0;
    return p;
}

// Blocks of kernel K that can be resident at once on the current device (a cooperative launch
// must not ask for more).
template <class K>
i64 resident_blocks(int threads, std::size_t smem, const DeviceProps& p) {
    allow_smem<K>(smem);
    int per_sm = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel_entry<K>, threads, smem),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    return i64(per_sm) * p.sms;
}

inline int current_device() {
    int dev = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    return dev;
}

#else  // host emulator

// The emulated device: a small GPU, so that tests see the persistent kernel refused when it
// does not fit.
constexpr int kEmuSms = 4;
constexpr std::size_t kEmuSmemPerSm = std::size_t(96) << 10;
inline DeviceProps query_props(int) { return DeviceProps{kEmuSms, kEmuSmemPerSm, true}; }
template <class K>
i64 resident_blocks(int, std::size_t smem, const DeviceProps& p) {
    return i64(p.sms) * i64(std::min<std::size_t>(16, kEmuSmemPerSm / std::max<std::size_t>(smem, 1)));
}
inline int current_device() { return emu::current_device(); }

// Like cudaLaunchCooperativeKernel, the emulator refuses a cooperative launch whose blocks
// cannot all be resident (or any, when a test forces refusal): false, nothing enqueued.
template <class K>
bool launch(i64 blocks, int threads, std::size_t smem, Stream, const typename K::Args& a, bool cooperative = false) {
    const i64 resident = cooperative ? resident_blocks<K>(threads, smem, query_props(0)) : 0;
    return emu::launch(blocks, threads, smem, cooperative, resident, [&] { K::run(a); });
}

#endif

// The current device's properties, by value: the cache grows when another thread first uses
// another device, which would leave a reference into it dangling.
inline DeviceProps props() {
    static std::mutex mu;
    static std::vector<DeviceProps> cache;  // per device, filled on first use
    const int dev = current_device();
    std::lock_guard<std::mutex> lock(mu);
    if (cache.size() <= std::size_t(dev)) cache.resize(std::size_t(dev) + 1);
    if (cache[std::size_t(dev)].sms == 0) cache[std::size_t(dev)] = query_props(dev);
    return cache[std::size_t(dev)];
}

// ---------------------------------------------------------------- layout and workspace

inline bool cell_two_phase(const Desc& d) { return d.cell == CellKind::GRU && !d.reset_after; }
inline i64 unit_tiles(const Desc& d) { return ceil_div(d.H, kUnits); }
inline i64 row_tiles(const Desc& d) { return ceil_div(d.N, kBN); }

// Workspace regions are 256-byte aligned (cudaMalloc's alignment, coalesced rows).
constexpr std::size_t kAlign = 256;

template <class T>
struct ForwardWork {
    T *xp[2] = {}, *wt[2] = {}, *bias[2] = {}, *bhn[2] = {}, *hbuf[2] = {}, *c[2] = {}, *rh[2] = {}, *ybuf = nullptr;

    ForwardWork(Carver& cv, const Desc& d, bool train) {
        const i64 GH = cell_gates(d) * d.H, NH = d.N * d.H;
        const bool xp_in_cache = train && cell_cache_gates(d) > 0;
        for (i64 dir = 0; dir < d.D; ++dir) {
            xp[dir] = cv.take<T>(xp_in_cache ? 0 : d.T * d.N * GH);
            wt[dir] = cv.take<T>(GH * d.H);  // W_hh^T
            bias[dir] = cv.take<T>(GH);
            bhn[dir] = cv.take<T>(d.H);
            hbuf[dir] = cv.take<T>(2 * NH);
            c[dir] = cv.take<T>(cell_has_c(d) ? NH : 0);
            rh[dir] = cv.take<T>(cell_two_phase(d) && !train ? NH : 0);
        }
        ybuf = cv.take<T>(!train && d.L > 1 ? 2 * d.T * d.N * d.D * d.H : 0);
    }
};

template <class T>
struct BackwardWork {
    T *dgates[2] = {}, *dh[2] = {}, *dc[2] = {}, *dybuf = nullptr, *gather = nullptr;
    double* partial[2] = {};

    BackwardWork(Carver& cv, const Desc& d, bool retain, bool diag) {
        const i64 cg = cell_cache_gates(d), NH = d.N * d.H;
        const bool own_dgates = cg == 0 || retain;  // else the gradients overwrite the cached gates
        for (i64 dir = 0; dir < d.D; ++dir) {
            dgates[dir] = own_dgates ? cv.take<T>(d.T * d.N * (cg ? cg : 1) * d.H) : nullptr;
            dh[dir] = cv.take<T>(NH);
            dc[dir] = cv.take<T>(cell_has_c(d) ? NH : 0);
            partial[dir] = diag ? cv.take<double>(d.T * unit_tiles(d) * d.N * kDiagValues) : nullptr;
        }
        dybuf = cv.take<T>(d.L > 1 ? 2 * d.T * d.N * d.D * d.H : 0);
        gather = cv.take<T>(d.N * cell_gates(d) * d.H);
    }
};

template <class T>
std::int64_t forward_bytes(const Desc& d, bool training) {
    Carver cv(nullptr, kAlign);
    ForwardWork<T>(cv, d, training);
    return std::int64_t(cv.used());
}
template <class T>
std::int64_t backward_bytes(const Desc& d, bool retain, bool diag) {
    Carver cv(nullptr, kAlign);
    BackwardWork<T>(cv, d, retain, diag);
    return std::int64_t(cv.used());
}

inline void check_workspace(std::size_t need, std::size_t have, const char* what) {
    if (have < need)
        throw std::invalid_argument(std::string(what) + ": workspace has " + std::to_string(have) + " bytes, needs " +
                                    std::to_string(need));
}

// ---------------------------------------------------------------- small launches

template <class K>
void launch_elementwise(i64 n, Stream s, const typename K::Args& a) {
    launch<K>(ceil_div(n, kElemThreads), kElemThreads, 0, s, a);
}

template <class T>
void gemm(Stream s, bool ta, bool tb, i64 m, i64 n, i64 k, T alpha, const T* A, i64 lda, const T* B, i64 ldb, T beta,
          T* C, i64 ldc) {
    if (m == 0 || n == 0) return;
    launch<Gemm<T>>(ceil_div(m, kGM) * ceil_div(n, kGN), kGemmThreads, gemm_smem<T>(), s,
                    GemmArgs<T>{ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc});
}

// Calls f(Cell{}) with the cell type of d: the plain cells (no peepholes; Reg = false compiles the
// regularizers out). The cell variants (csrc/cells/lstm.h, layernorm.h) run on the CPU only.
inline void check_plain(const Desc& d, const char* what) {
    if (d.P > 0 || d.peephole || d.layer_norm || d.zoneout_c || d.input_norm != InputNorm::None)
        throw std::invalid_argument(std::string(what) + ": the CUDA backend runs the plain cells only "
                                    "(no projection, peepholes, LayerNorm or zoneout)");
    if (d.cell == CellKind::LIGRU || d.cell == CellKind::SLIGRU)
        throw std::invalid_argument(std::string(what) + ": the CUDA backend does not run " + cell_info(d).name +
                                    " (the CPU backend does)");
}

template <class F>
void with_cell(const Desc& d, F&& f) {
    switch (d.cell) {
        case CellKind::RNN_TANH: return f(RNNCell<false, false>{});
        case CellKind::RNN_RELU: return f(RNNCell<true, false>{});
        case CellKind::LSTM: return f(LSTMCell<false, false>{});
        case CellKind::GRU:
            if (d.reset_after) return f(GRUCell<true, false>{});
            return f(GRUCell<false, false>{});
        case CellKind::LIGRU:
        case CellKind::SLIGRU: break;
    }
    check_plain(d, "CUDA");
}

// ---------------------------------------------------------------- recurrence plans

inline int persistent_mode() {  // 0 never, 1 whenever it fits, 2 auto
    const char* v = std::getenv("FASTRNN_CUDA_PERSISTENT");
    if (v && std::strcmp(v, "0") == 0) return 0;
    if (v && std::strcmp(v, "1") == 0) return 1;
    return 2;
}

struct Plan {
    bool persistent;
    std::size_t smem_persistent, smem_step;  // dynamic shared memory of the two kinds of kernel
};

template <class K>
bool persistent_fits(i64 blocks, std::size_t smem) {
    const DeviceProps p = props();
    return p.cooperative && smem <= p.smem_optin && blocks <= resident_blocks<K>(kUnits, smem, p);
}

inline bool want_persistent(const Desc& d) {
    const int mode = persistent_mode();
    return mode == 1 || (mode == 2 && d.N <= kPersistentMaxBatch);
}

template <class Cell, bool Train, class T>
Plan forward_plan(const Desc& d) {
    const std::size_t smem = StepSmem<T>::bytes(false, d.H * Cell::gates * kUnits);
    const bool p = want_persistent(d) && persistent_fits<ForwardPersistent<Cell, Train, T>>(d.D * unit_tiles(d), smem);
    return Plan{p, smem, StepSmem<T>::bytes(false, 0)};
}

template <class Cell, class T>
Plan backward_plan(const Desc& d, bool diag) {
    const std::size_t smem = StepSmem<T>::bytes(diag, Cell::gates * d.H * kUnits);
    const bool p = want_persistent(d) && persistent_fits<BackwardPersistent<Cell, T>>(d.D * unit_tiles(d), smem);
    return Plan{p, smem, StepSmem<T>::bytes(diag, 0)};
}

template <class Cell, bool Train, class T>
void run_forward(const StepArgs<T>& a, const Desc& d, const Plan& plan, Stream s) {
    if (plan.persistent && launch<ForwardPersistent<Cell, Train, T>>(d.D * a.unit_tiles, kUnits, plan.smem_persistent,
                                                                       s, a, true))
        return;
    const i64 blocks = d.D * a.row_tiles * a.unit_tiles;
    StepArgs<T> b = a;
    for (i64 step = 0; step < d.T; ++step) {
        b.s = step;
        launch<ForwardStep<Cell, Train, 0, T>>(blocks, kUnits, plan.smem_step, s, b);
        if constexpr (Cell::two_phase) launch<ForwardStep<Cell, Train, 1, T>>(blocks, kUnits, plan.smem_step, s, b);
    }
}

template <class Cell, class T>
void run_backward(const StepArgs<T>& a, const Desc& d, const Plan& plan, Stream s) {
    if (plan.persistent &&
        launch<BackwardPersistent<Cell, T>>(d.D * a.unit_tiles, kUnits, plan.smem_persistent, s, a, true))
        return;
    const i64 blocks = d.D * a.row_tiles * a.unit_tiles;
    StepArgs<T> b = a;
    for (i64 step = 0; step < d.T; ++step) {
        b.s = step;
        launch<BackwardStep<Cell, 0, T>>(blocks, kUnits, plan.smem_step, s, b);
        if constexpr (Cell::two_phase) launch<BackwardStep<Cell, 1, T>>(blocks, kUnits, plan.smem_step, s, b);
    }
    launch<BackwardFinal<Cell, T>>(blocks, kUnits, plan.smem_step, s, b);
}

// ---------------------------------------------------------------- the skeleton's backend

// The arithmetic of the skeleton on a stream: the GEMM kernel and small elementwise launches.
template <class T>
struct CudaOps {
    const Desc& d;
    Stream stream;
    void gemm(bool ta, bool tb, i64 m, i64 n, i64 k, T alpha, const T* A, i64 lda, const T* B, i64 ldb, T beta, T* C,
              i64 ldc) {
        cuda::gemm<T>(stream, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
    }
    void input_gemm(i64, i64 m, i64 n, i64 k, const T* X, const T* W, T* C, i64 ldc) {
        gemm(false, true, m, n, k, T(1), X, k, W, k, T(0), C, ldc);
    }
    void column_sums(const T* a, i64 rows, i64 cols, i64 lda, T* out) {
        launch_elementwise<ColumnSums<T>>(cols, stream, {a, rows, cols, lda, out});
    }
    void copy(T* dst, const T* src, i64 n) { cuda::copy(dst, src, sizeof(T) * std::size_t(n), stream); }
    void copy_or_zero(T* dst, const T* src, i64 n) {
        if (src)
            copy(dst, src, n);
        else
            zero(dst, sizeof(T) * std::size_t(n), stream);
    }
    void multiply(const T* a, const T* m, T* out, i64 n) { launch_elementwise<Multiply<T>>(n, stream, {a, m, out, n}); }
    void gather_first_steps(const T* dg, i64 ld_dg, i64 rows, const i64* lengths, bool reverse, T* out) {
        launch_elementwise<GatherFirstStep<T>>(d.N * rows, stream, {dg, ld_dg, rows, d.T, d.N, lengths, reverse, out});
    }
    void fold_bias(const LayerWeights<T>& W, T* bias, T* bhn) {
        const i64 GH = cell_gates(d) * d.H;
        launch_elementwise<FoldBias<T>>(GH, stream, {d.bias ? W.b_ih : nullptr, d.bias ? W.b_hh : nullptr, bias, bhn,
                                                     GH, d.H, cell_info(d).bias_apart >= 0});
    }
};

template <class T>
StepArgs<T> step_args(const Desc& d, const Recurrence<T>* rec) {
    StepArgs<T> a{};
    a.row_tiles = row_tiles(d);
    a.unit_tiles = unit_tiles(d);
    for (i64 dir = 0; dir < d.D; ++dir) a.rec[dir] = rec[dir];
    return a;
}

// A forward call: W_hh transposed for the step kernels, the recurrence planned once per call.
template <class Cell, class T>
struct CudaForward : CudaOps<T> {
    using CudaOps<T>::d;
    using CudaOps<T>::stream;
    Carver carver;
    ForwardWork<T> ws;
    const Plan plan;

    CudaForward(const Desc& d_, bool train, void* workspace, std::size_t workspace_bytes, Stream s)
        : CudaOps<T>{d_, s}, carver(workspace, kAlign), ws(carver, d_, train),
          plan(train ? forward_plan<Cell, true, T>(d_) : forward_plan<Cell, false, T>(d_)) {
        check_workspace(carver.used(), workspace_bytes, "forward");
    }
    void prepare(Recurrence<T>& r, const LayerWeights<T>& W, const CacheLayout&, i64, i64 dir) {
        const i64 GH = Cell::gates * d.H;
        launch_elementwise<Transpose<T>>(GH * d.H, stream, {W.w_hh, ws.wt[dir], GH, d.H});
        r.packed = ws.wt[dir];
    }
    void run(Recurrence<T>* rec, bool train) {
        const StepArgs<T> a = step_args(d, rec);
        if (train)
            run_forward<Cell, true, T>(a, d, plan, stream);
        else
            run_forward<Cell, false, T>(a, d, plan, stream);
    }
};

// A backward call: the step kernels read W_hh as it is; diagnostics are summed per unit tile and
// finished per direction.
template <class Cell, class T>
struct CudaBackward : CudaOps<T> {
    using CudaOps<T>::d;
    using CudaOps<T>::stream;
    const BackwardOptions<T>& opt;
    const bool diag;
    Carver carver;
    BackwardWork<T> ws;
    const Plan plan;

    CudaBackward(const Desc& d_, const BackwardOptions<T>& opt_, void* workspace, std::size_t workspace_bytes, Stream s)
        : CudaOps<T>{d_, s}, opt(opt_), diag(opt_.diag.grad_h_sq != nullptr), carver(workspace, kAlign),
          ws(carver, d_, opt_.retain, diag), plan(backward_plan<Cell, T>(d_, diag)) {
        check_workspace(carver.used(), workspace_bytes, "backward");
    }
    void prepare(Recurrence<T>& r, const LayerWeights<T>& W, const LayerGrads<T>&, const CacheLayout&, i64, i64) {
        r.packed = W.w_hh;
    }
    void run(Recurrence<T>* rec) {
        StepArgs<T> a = step_args(d, rec);
        for (i64 dir = 0; dir < d.D; ++dir) a.diag[dir] = DiagSlots{ws.partial[dir], a.unit_tiles};
        run_backward<Cell, T>(a, d, plan, stream);
    }
    void finish(const Recurrence<T>& r, i64 dir, i64 s_idx) {
        if (!diag) return;
        const i64 T_ = d.T;
        auto at = [&](double* p) { return p ? p + s_idx * T_ : nullptr; };
        launch_elementwise<FinishDiagnostics>(
            T_, stream,
            {ws.partial[dir], T_, d.N, unit_tiles(d), r.lengths, dir == 1, at(opt.diag.grad_h_sq),
             Cell::has_c ? at(opt.diag.grad_c_sq) : nullptr, at(opt.diag.carried_sq), at(opt.diag.prev_state_sq)});
    }
    const T* input_grad(const Recurrence<T>& r, const LayerWeights<T>&, const LayerGrads<T>&, const CacheLayout&, i64,
                        i64) {
        return r.dgates;
    }
    RecurrentInput<T> recurrent_input(const Recurrence<T>& r, const T* y, i64 ld, i64) { return {y, ld, r.h0}; }
    T* w_hh_grad(const LayerGrads<T>& Gr, i64, i64) { return Gr.w_hh; }
    void finish_w_hh_grad(const T*, const LayerGrads<T>&, i64) {}
    void variant_grads(const Recurrence<T>&, const LayerGrads<T>&, const CacheLayout&, i64) {}
};

// ---------------------------------------------------------------- API (per dtype)

template <class T>
void forward(const Desc& d, const LayerWeights<T>* w, const T* x, const T* h0, const T* c0,
             const std::int64_t* lengths, const T* masks, T* out, T* h_n, T* c_n, T* cache, void* workspace,
             std::size_t workspace_bytes, Stream stream) {
    check_plain(d, "forward");
    with_cell(d, [&](auto cell) {
        CudaForward<decltype(cell), T> backend(d, cache != nullptr, workspace, workspace_bytes, stream);
        forward_walk(backend, d, w, x, h0, c0, lengths, masks, out, h_n, c_n, cache);
    });
}

template <class T>
void backward(const Desc& d, const LayerWeights<T>* w, const T* x, const std::int64_t* lengths, const T* masks,
              T* cache, const T* grad_out, const T* grad_h_n, const T* grad_c_n, T* grad_x, T* grad_h0, T* grad_c0,
              const LayerGrads<T>* g, const BackwardOptions<T>& opt, void* workspace, std::size_t workspace_bytes,
              Stream stream) {
    check_plain(d, "backward");
    with_cell(d, [&](auto cell) {
        CudaBackward<decltype(cell), T> backend(d, opt, workspace, workspace_bytes, stream);
        backward_walk(backend, d, w, x, lengths, masks, cache, grad_out, grad_h_n, grad_c_n, grad_x, grad_h0, grad_c0,
                      g, opt.bptt_clip);
    });
}

template <class T>
bool uses_persistent_for(const Desc& d, bool fwd, bool diag) {
    bool p = false;
    with_cell(d, [&](auto cell) {
        using Cell = decltype(cell);
        p = fwd ? forward_plan<Cell, true, T>(d).persistent : backward_plan<Cell, T>(d, diag).persistent;
    });
    return p;
}

}  // namespace cuda
}  // namespace fastrnn
