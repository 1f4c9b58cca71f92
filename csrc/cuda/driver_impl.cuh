// The CUDA driver: csrc/core/driver.cpp's structure on a CUDA stream. Per layer: the hoisted
// input projection for all T*N rows (one GEMM), then the recurrence (a fused kernel per step, or
// one persistent kernel for all steps), then for BPTT the weight gradients and dx as GEMMs over
// all steps. Included by driver_f32.cu and driver_f64.cu (one dtype each, so nvcc compiles them
// in parallel) and by runtime.cu; built by nvcc, or by the host compiler for the emulator.
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

// Offsets into the training cache: the same layout as CacheLayout in csrc/core/driver.cpp (see
// cache_elements in csrc/core/driver.h); tests/test_cuda.py compares the caches both backends
// write, element by element.
struct CacheLayout {
    i64 TN, D, L, DH, gate_block, c_block, dir_block, states;
    bool dropout;

    CacheLayout(const Desc& d, bool dropout_)
        : TN(d.T * d.N), D(d.D), L(d.L), DH(d.D * d.H),
          gate_block(d.T * d.N * cell_cache_gates(d) * d.H), c_block(cell_has_c(d) ? d.T * d.N * d.H : 0),
          dir_block(gate_block + c_block), states(d.L * d.D * d.N * d.H), dropout(dropout_) {}

    i64 layer_block(i64 l) const { return TN * DH * ((dropout && l < L - 1) ? 2 : 1) + D * dir_block; }
    i64 layer(i64 l) const {
        i64 off = 0;
        for (i64 k = 0; k < l; ++k) off += layer_block(k);
        return off;
    }
    i64 y(i64 l) const { return layer(l); }
    i64 dropped_input(i64 l) const { return layer(l) + TN * DH; }
    i64 gates(i64 l, i64 dir) const { return layer(l) + layer_block(l) - (D - dir) * dir_block; }
    i64 c_hist(i64 l, i64 dir) const { return gates(l, dir) + gate_block; }
    i64 h0() const { return layer(L); }
    i64 c0() const { return h0() + states; }
    i64 total() const { return h0() + states * (c_block ? 2 : 1); }
};

// Carves one workspace into 256-byte aligned regions; a sizing pass (null base) and the real
// pass run the same code, so the size and the layout cannot disagree.
class Carver {
   public:
    explicit Carver(void* base) : base_(static_cast<char*>(base)) {}
    template <class U>
    U* take(i64 n) {
        U* p = base_ ? reinterpret_cast<U*>(base_ + used_) : nullptr;
        used_ += (std::size_t(std::max<i64>(n, 0)) * sizeof(U) + 255) / 256 * 256;
        return p;
    }
    std::size_t used() const { return used_; }

   private:
    char* base_;
    std::size_t used_ = 0;
};

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
    Carver cv(nullptr);
    ForwardWork<T>(cv, d, training);
    return std::int64_t(cv.used());
}
template <class T>
std::int64_t backward_bytes(const Desc& d, bool retain, bool diag) {
    Carver cv(nullptr);
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

template <class T>
void copy_or_zero(T* dst, const T* src, i64 n, Stream s) {
    if (src)
        copy(dst, src, sizeof(T) * std::size_t(n), s);
    else
        zero(dst, sizeof(T) * std::size_t(n), s);
}

// Calls f(Cell{}) with the cell type of d: the plain cells (no peepholes; Reg = false compiles the
// regularizers out). The cell variants (csrc/cells/lstm.h, layernorm.h) run on the CPU only.
template <class F>
void with_cell(const Desc& d, F&& f) {
    switch (d.cell) {
        case CellKind::RNN_TANH: return f(RNNCell<false, false>{});
        case CellKind::RNN_RELU: return f(RNNCell<true, false>{});
        case CellKind::LSTM: return f(LSTMCell<false, false>{});
        case CellKind::GRU: break;
    }
    if (d.reset_after)
        f(GRUCell<true, false>{});
    else
        f(GRUCell<false, false>{});
}

inline void check_plain(const Desc& d, const char* what) {
    if (d.P > 0 || d.peephole || d.layer_norm || d.zoneout_c)
        throw std::invalid_argument(std::string(what) + ": the CUDA backend runs the plain cells only "
                                    "(no projection, peepholes, LayerNorm or zoneout)");
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

// ---------------------------------------------------------------- forward

template <class Cell, class T>
void forward_cell(const Desc& d, const LayerWeights<T>* w, const T* x, const T* h0, const T* c0,
                  const std::int64_t* lengths, const T* masks, T* out, T* h_n, T* c_n, T* cache, void* workspace,
                  std::size_t workspace_bytes, Stream stream) {
    check_plain(d, "forward");
    const bool train = cache != nullptr, has_c = Cell::has_c;
    const i64 T_ = d.T, N = d.N, H = d.H, D = d.D, DH = D * H, GH = Cell::gates * H;
    const i64 cg = cell_cache_gates(d), NH = N * H, TN = T_ * N;
    const CacheLayout lay(d, masks != nullptr);
    Carver carver(workspace);
    ForwardWork<T> ws(carver, d, train);
    check_workspace(carver.used(), workspace_bytes, "forward");
    const Plan plan = train ? forward_plan<Cell, true, T>(d) : forward_plan<Cell, false, T>(d);

    for (i64 l = 0; l < d.L; ++l) {
        const i64 C_l = l == 0 ? d.C : DH;
        const T* X = l == 0 ? x
                     : train ? cache + (masks ? lay.dropped_input(l - 1) : lay.y(l - 1))
                             : ws.ybuf + ((l - 1) % 2) * TN * DH;
        T* Y = train ? cache + lay.y(l) : (l == d.L - 1 ? out : ws.ybuf + (l % 2) * TN * DH);
        StepArgs<T> a{};
        a.row_tiles = row_tiles(d);
        a.unit_tiles = unit_tiles(d);
        for (i64 dir = 0; dir < D; ++dir) {
            const LayerWeights<T>& W = w[l * D + dir];
            const i64 s_idx = l * D + dir;
            Recurrence<T>& r = a.rec[dir];
            r.steps = T_; r.N = N; r.H = H; r.G = Cell::gates; r.K = H;
            r.reverse = dir == 1; r.train = train; r.lengths = lengths;
            r.packed = ws.wt[dir]; r.bias = ws.bias[dir]; r.bhn = ws.bhn[dir];
            const bool in_cache = train && cg > 0;  // the cell turns the projection into the cached gates
            r.gates = in_cache ? cache + lay.gates(l, dir) : ws.xp[dir];
            r.ld_gates = in_cache ? cg * H : GH;
            r.hbuf = ws.hbuf[dir];
            r.c = has_c ? ws.c[dir] : nullptr;
            r.c_hist = train && has_c ? cache + lay.c_hist(l, dir) : nullptr;
            r.rh = ws.rh[dir]; r.ld_rh = H;
            r.y = Y + dir * H; r.ld_y = DH;
            r.bptt_clip = T(0);

            // Hoisted input projection for all T*N rows; W_hh^T for the recurrent product.
            gemm<T>(stream, false, true, TN, GH, C_l, T(1), X, C_l, W.w_ih, C_l, T(0), r.gates, r.ld_gates);
            launch_elementwise<Transpose<T>>(GH * H, stream, {W.w_hh, ws.wt[dir], GH, H});
            launch_elementwise<FoldBias<T>>(GH, stream,
                                            {d.bias ? W.b_ih : nullptr, d.bias ? W.b_hh : nullptr, ws.bias[dir],
                                             ws.bhn[dir], GH, H, Cell::gates == 3 && !Cell::two_phase});
            copy_or_zero(r.hbuf, h0 ? h0 + s_idx * NH : nullptr, NH, stream);
            if (has_c) copy_or_zero(r.c, c0 ? c0 + s_idx * NH : nullptr, NH, stream);
        }
        if (train)
            run_forward<Cell, true, T>(a, d, plan, stream);
        else
            run_forward<Cell, false, T>(a, d, plan, stream);
        for (i64 dir = 0; dir < D; ++dir) {
            const i64 s_idx = l * D + dir;
            copy(h_n + s_idx * NH, a.rec[dir].hbuf + (T_ & 1) * NH, sizeof(T) * NH, stream);
            if (has_c) copy(c_n + s_idx * NH, a.rec[dir].c, sizeof(T) * NH, stream);
        }
        if (train && masks && l < d.L - 1)
            launch_elementwise<Multiply<T>>(TN * DH, stream,
                                            {Y, masks + l * TN * DH, cache + lay.dropped_input(l), TN * DH});
    }
    if (train) {
        copy(out, cache + lay.y(d.L - 1), sizeof(T) * TN * DH, stream);
        copy_or_zero(cache + lay.h0(), h0, d.L * D * NH, stream);
        if (has_c) copy_or_zero(cache + lay.c0(), c0, d.L * D * NH, stream);
    }
}

// ---------------------------------------------------------------- backward

// dW_hh rows [r0, r1) += sum over steps of dG^T h_{t-1} (csrc/core/driver.cpp accumulate_w_hh).
template <class T>
void accumulate_w_hh(const Desc& d, i64 dir, const i64* lengths, i64 r0, i64 r1, const T* dg, i64 ld_dg, const T* Y,
                     const T* alt, i64 ld_alt, const T* h0, T* dW, T* gather, Stream s) {
    const i64 T_ = d.T, N = d.N, H = d.H, DH = d.D * H, rows = r1 - r0;
    T* dWr = dW + r0 * H;
    if (alt) {
        gemm<T>(s, true, false, rows, H, T_ * N, T(1), dg, ld_dg, alt, ld_alt, T(1), dWr, H);
        return;
    }
    if (T_ > 1) {
        const T* dg_first = dir == 0 ? dg + N * ld_dg : dg;
        const T* y_prev = dir == 0 ? Y : Y + N * DH;
        gemm<T>(s, true, false, rows, H, (T_ - 1) * N, T(1), dg_first, ld_dg, y_prev, DH, T(1), dWr, H);
    }
    launch_elementwise<GatherFirstStep<T>>(N * rows, s, {dg, ld_dg, rows, T_, N, lengths, dir == 1, gather});
    gemm<T>(s, true, false, rows, H, N, T(1), gather, rows, h0, H, T(1), dWr, H);
}

template <class T>
void column_sums(const T* a, i64 rows, i64 cols, i64 lda, T* out, Stream s) {
    launch_elementwise<ColumnSums<T>>(cols, s, {a, rows, cols, lda, out});
}

template <class Cell, class T>
void backward_cell(const Desc& d, const LayerWeights<T>* w, const T* x, const std::int64_t* lengths, const T* masks,
                   T* cache, const T* grad_out, const T* grad_h_n, const T* grad_c_n, T* grad_x, T* grad_h0,
                   T* grad_c0, const LayerGrads<T>* g, const BackwardOptions<T>& opt, void* workspace,
                   std::size_t workspace_bytes, Stream stream) {
    check_plain(d, "backward");
    constexpr bool has_c = Cell::has_c, v1 = Cell::gates == 3 && Cell::two_phase,
                   split_h = Cell::gates == 3 && !Cell::two_phase;
    const i64 T_ = d.T, N = d.N, H = d.H, D = d.D, DH = D * H, GH = Cell::gates * H;
    const i64 cg = cell_cache_gates(d), NH = N * H, TN = T_ * N;
    const CacheLayout lay(d, masks != nullptr);
    const i64 ld_dg = cg ? cg * H : H;
    const bool diag = opt.diag.grad_h_sq != nullptr;
    Carver carver(workspace);
    BackwardWork<T> ws(carver, d, opt.retain, diag);
    check_workspace(carver.used(), workspace_bytes, "backward");
    const Plan plan = backward_plan<Cell, T>(d, diag);
    const T clip = opt.bptt_clip > T(0) ? opt.bptt_clip : std::numeric_limits<T>::infinity();

    const T* h0_all = cache + lay.h0();
    const T* c0_all = has_c ? cache + lay.c0() : nullptr;
    const T* dY = grad_out;  // gradient arriving at the outputs of the current layer (null: none)
    for (i64 l = d.L - 1; l >= 0; --l) {
        const i64 C_l = l == 0 ? d.C : DH;
        const T* X = l == 0 ? x : cache + (masks ? lay.dropped_input(l - 1) : lay.y(l - 1));
        const T* Y = cache + lay.y(l);
        T* dX = l == 0 ? grad_x : ws.dybuf + (l % 2) * TN * DH;
        StepArgs<T> a{};
        a.row_tiles = row_tiles(d);
        a.unit_tiles = unit_tiles(d);
        for (i64 dir = 0; dir < D; ++dir) {
            const i64 s_idx = l * D + dir;
            Recurrence<T>& r = a.rec[dir];
            r.steps = T_; r.N = N; r.H = H; r.G = Cell::gates; r.K = H;
            r.reverse = dir == 1; r.train = true; r.lengths = lengths;
            r.packed = w[s_idx].w_hh;  // the backward product reads W_hh as it is
            // Gate gradients overwrite the cached gates in place (each value is read first),
            // unless the cache must be kept: then they go to the workspace. RNN caches no gates.
            r.gates = cg ? cache + lay.gates(l, dir) : nullptr;
            r.dgates = ws.dgates[dir] ? ws.dgates[dir] : r.gates;
            r.ld_gates = r.ld_dgates = ld_dg;
            r.c_hist = has_c ? cache + lay.c_hist(l, dir) : nullptr;
            r.y = const_cast<T*>(Y) + dir * H; r.ld_y = DH;
            r.h0 = h0_all + s_idx * NH;
            r.c0 = has_c ? c0_all + s_idx * NH : nullptr;
            r.dy = dY ? dY + dir * H : nullptr; r.ld_dy = DH;
            r.dh = ws.dh[dir];
            r.dc = has_c ? ws.dc[dir] : nullptr;
            r.bptt_clip = clip;
            copy_or_zero(r.dh, grad_h_n ? grad_h_n + s_idx * NH : nullptr, NH, stream);
            if (has_c) copy_or_zero(r.dc, grad_c_n ? grad_c_n + s_idx * NH : nullptr, NH, stream);
            a.diag[dir] = DiagSlots{ws.partial[dir], a.unit_tiles};
        }
        run_backward<Cell, T>(a, d, plan, stream);

        for (i64 dir = 0; dir < D; ++dir) {
            const LayerWeights<T>& W = w[l * D + dir];
            const LayerGrads<T>& Gr = g[l * D + dir];
            const i64 s_idx = l * D + dir;
            const Recurrence<T>& r = a.rec[dir];
            copy(grad_h0 + s_idx * NH, r.dh, sizeof(T) * NH, stream);
            if (has_c) copy(grad_c0 + s_idx * NH, r.dc, sizeof(T) * NH, stream);
            if (diag) {
                auto at = [&](double* p) { return p ? p + s_idx * T_ : nullptr; };
                launch_elementwise<FinishDiagnostics>(
                    T_, stream,
                    {ws.partial[dir], T_, N, a.unit_tiles, lengths, dir == 1, at(opt.diag.grad_h_sq),
                     has_c ? at(opt.diag.grad_c_sq) : nullptr, at(opt.diag.carried_sq), at(opt.diag.prev_state_sq)});
            }

            // Weight gradients as large GEMMs over all steps.
            const T* dgx = r.dgates;  // [TN, ld_dg]: dL/d(input-side pre-activations) in the first G blocks
            gemm<T>(stream, true, false, GH, C_l, TN, T(1), dgx, ld_dg, X, C_l, T(1), Gr.w_ih, C_l);
            const T* Yd = Y + dir * H;
            const T* none = nullptr;
            if (split_h) {  // GRU reset_after: W_hn h sees dn*r, kept in block 3
                accumulate_w_hh(d, dir, lengths, 0, 2 * H, dgx, ld_dg, Yd, none, 0, r.h0, Gr.w_hh, ws.gather, stream);
                accumulate_w_hh(d, dir, lengths, 2 * H, 3 * H, dgx + 3 * H, ld_dg, Yd, none, 0, r.h0, Gr.w_hh,
                                ws.gather, stream);
            } else if (v1) {  // W_hn multiplies the cached r*h_{t-1} (block 3)
                accumulate_w_hh(d, dir, lengths, 0, 2 * H, dgx, ld_dg, Yd, none, 0, r.h0, Gr.w_hh, ws.gather, stream);
                accumulate_w_hh(d, dir, lengths, 2 * H, 3 * H, dgx + 2 * H, ld_dg, Yd, r.gates + 3 * H, ld_dg, r.h0,
                                Gr.w_hh, ws.gather, stream);
            } else {
                accumulate_w_hh(d, dir, lengths, 0, GH, dgx, ld_dg, Yd, none, 0, r.h0, Gr.w_hh, ws.gather, stream);
            }
            if (d.bias) {
                column_sums(dgx, TN, GH, ld_dg, Gr.b_ih, stream);
                if (split_h) {
                    column_sums(dgx, TN, 2 * H, ld_dg, Gr.b_hh, stream);
                    column_sums(dgx + 3 * H, TN, H, ld_dg, Gr.b_hh + 2 * H, stream);
                } else {
                    column_sums(dgx, TN, GH, ld_dg, Gr.b_hh, stream);
                }
            }
            gemm<T>(stream, false, false, TN, C_l, GH, T(1), dgx, ld_dg, W.w_ih, C_l, dir == 0 ? T(0) : T(1), dX, C_l);
        }
        if (l > 0) {
            if (masks) launch_elementwise<Multiply<T>>(TN * DH, stream, {dX, masks + (l - 1) * TN * DH, dX, TN * DH});
            dY = dX;
        }
    }
}

// ---------------------------------------------------------------- API (per dtype)

template <class T>
void forward(const Desc& d, const LayerWeights<T>* w, const T* x, const T* h0, const T* c0,
             const std::int64_t* lengths, const T* masks, T* out, T* h_n, T* c_n, T* cache, void* workspace,
             std::size_t workspace_bytes, Stream stream) {
    with_cell(d, [&](auto cell) {
        forward_cell<decltype(cell), T>(d, w, x, h0, c0, lengths, masks, out, h_n, c_n, cache, workspace,
                                        workspace_bytes, stream);
    });
}

template <class T>
void backward(const Desc& d, const LayerWeights<T>* w, const T* x, const std::int64_t* lengths, const T* masks,
              T* cache, const T* grad_out, const T* grad_h_n, const T* grad_c_n, T* grad_x, T* grad_h0, T* grad_c0,
              const LayerGrads<T>* g, const BackwardOptions<T>& opt, void* workspace, std::size_t workspace_bytes,
              Stream stream) {
    with_cell(d, [&](auto cell) {
        backward_cell<decltype(cell), T>(d, w, x, lengths, masks, cache, grad_out, grad_h_n, grad_c_n, grad_x,
                                         grad_h0, grad_c0, g, opt, workspace, workspace_bytes, stream);
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
