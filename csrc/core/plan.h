// A plan: a layer stack configured once. It holds what stays fixed between calls (the cell, its
// variants, every size but T and N), validated when the plan is made; the parameters' layout
// (names, shapes, order: what Python's `params` and the C ABI's flat arrays follow); the weights
// the calls read (the caller's arrays, by pointer); and, for inference, W_hh packed once for the
// microkernel. A call then passes only its own data: x, states, lengths, outputs, cache.
//
// The packed weights are never stale: each inference call compares the weights with the copy
// taken when they were packed (memcmp, one read of W_hh and of the copy, no write) and repacks
// when they differ; training calls pack into their scratch as before, since their weights change
// every step. docs/design.md ("The plan") has the reasoning and the cost.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "desc.h"
#include "../kernels/reduced.h"

namespace fastrnn {

// What a parameter is to the kernels.
enum class Role : int {
    WeightIH, WeightHH, BiasIH, BiasHH, WeightHR, Peephole, GainIH, GainHH, GainC, BiasC,
    RunningMean, RunningVar,  // buffers (Li-GRU batch norm): not trained, updated by training calls
};

struct ParamInfo {
    std::string name;                // Python's name: torch's for the plain cells, e.g. "weight_ih_l0_reverse"
    std::vector<std::int64_t> shape;
    std::int64_t layer, direction;
    Role role;
    bool buffer;
};

// Parameters, then buffers, in their order (torch's for the plain cells and LSTMP; the variants'
// tensors after each layer-direction's).
std::vector<ParamInfo> parameter_layout(const Desc& config);

// Throws std::invalid_argument naming the setting when `config` (sizes but T and N) is not a
// problem fastrnn runs: an unknown cell, a variant its cell does not take, sizes < 1.
void validate_config(const Desc& config);

// 64-byte aligned storage: the microkernel streams packed panels with full-vector loads, which
// cost twice as much when they straddle cache lines (malloc aligns to 16 bytes only).
template <class T>
struct CacheLineAllocator {
    using value_type = T;
    CacheLineAllocator() = default;
    template <class U>
    CacheLineAllocator(const CacheLineAllocator<U>&) {}
    T* allocate(std::size_t n) { return static_cast<T*>(::operator new[](n * sizeof(T), std::align_val_t(64))); }
    void deallocate(T* p, std::size_t) { ::operator delete[](p, std::align_val_t(64)); }
    template <class U>
    bool operator==(const CacheLineAllocator<U>&) const { return true; }
    template <class U>
    bool operator!=(const CacheLineAllocator<U>&) const { return false; }
};

// W_hh (and W_hr) of every layer-direction packed for one ISA's microkernel, with a copy of the
// weights they were packed from.
template <class T>
struct PackedWeights {
    int nr = 0;
    std::vector<const T*> w_hh, w_hr;  // per layer-direction, into `panels`
    std::vector<T, CacheLineAllocator<T>> panels;
    std::vector<T> snapshot;
    std::size_t bytes() const { return sizeof(T) * (panels.size() + snapshot.size()); }
};

// Reduced-precision inference (csrc/kernels/reduced.h): W_ih, W_hh (and W_hr) of every
// layer-direction in int8 (quantized per output row) or bf16, the recurrent matrices in the
// unit blocks of a float32 ISA's panels (nr), with a copy of the float32 weights they came from.
struct ReducedWeights {
    Precision precision = Precision::Int8;
    int nr = 0;
    const void* kernels = nullptr;  // the int8::Kernels or bf16::Kernels they were made for
    std::vector<ReducedMatrix> w_ih, w_hh, w_hr;  // per layer-direction (w_hr: LSTMP)
    std::vector<std::uint8_t, CacheLineAllocator<std::uint8_t>> codes;  // int8 codes or bf16 values
    std::vector<float, CacheLineAllocator<float>> scales;               // int8
    std::vector<std::int32_t, CacheLineAllocator<std::int32_t>> wsums;  // int8
    std::vector<float> snapshot;
    std::size_t bytes() const {
        return codes.size() + sizeof(float) * (scales.size() + snapshot.size()) + sizeof(std::int32_t) * wsums.size();
    }
};

class Plan {
   public:
    Plan(const Desc& config, bool double_precision);  // config.T, config.N unused

    const Desc& config() const { return config_; }
    bool is_double() const { return double_; }
    const std::vector<ParamInfo>& layout() const { return layout_; }
    // The descriptor of one call (T, N >= 1).
    Desc call(std::int64_t T, std::int64_t N) const;

    // The arrays of `layout()` in its order (pointers of the plan's dtype; the caller keeps them
    // alive and the plan reads them at every call). Drops the packed copies.
    template <class T>
    void set_weights(const std::vector<T*>& arrays);
    // The same arrangement without keeping it (a backend that gets the weights per call).
    template <class T>
    std::vector<LayerWeights<T>> arrange(const std::vector<T*>& arrays) const;
    template <class T>
    const std::vector<LayerWeights<T>>& weights() const;
    // Counts set_weights calls: a holder of a copy of `weights()` (a stream) knows when to take a new one.
    std::uint64_t weights_version() const { return version_.load(std::memory_order_acquire); }
    // A copy of `weights()` taken under the plan's lock (set_weights may run on another thread).
    template <class T>
    std::vector<LayerWeights<T>> weights_copy() const {
        std::lock_guard<std::mutex> lock(mu_);
        return weights<T>();
    }
    // Gradient pointers in `layout()` order (buffers' entries ignored) as the driver takes them.
    template <class T>
    std::vector<LayerGrads<T>> grads(const std::vector<T*>& arrays) const;

    // The packed weights for the active ISA (nr), repacked when the weights changed since.
    template <class T>
    std::shared_ptr<const PackedWeights<T>> packed(int nr, void (*pack)(const T*, std::int64_t, std::int64_t,
                                                                         std::int64_t, T*)) const;
    // The weights in int8 (quantized) or bf16 for `kernels` and a float32 ISA of panel width nr,
    // made again when the weights changed since (float32 plans only).
    std::shared_ptr<const ReducedWeights> reduced(int nr, const int8::Kernels& kernels) const;
    std::shared_ptr<const ReducedWeights> reduced(int nr, const bf16::Kernels& kernels) const;
    std::size_t packed_bytes() const;  // packed and quantized copies, with their snapshots

   private:
    Desc config_;
    bool double_;
    std::vector<ParamInfo> layout_;
    std::vector<LayerWeights<float>> wf_;
    std::vector<LayerWeights<double>> wd_;
    std::vector<float> ones_f_;  // SLi-GRU without affine recurrent LayerNorm: its unit gains
    std::vector<double> ones_d_;
    mutable std::mutex mu_;
    std::atomic<std::uint64_t> version_{0};
    mutable std::shared_ptr<const PackedWeights<float>> packed_f_;  // a cache: calls on a const plan fill it
    mutable std::shared_ptr<const PackedWeights<double>> packed_d_;
    mutable std::shared_ptr<const ReducedWeights> reduced_;
    std::shared_ptr<const ReducedWeights> make_reduced(Precision precision, int nr, const int8::Kernels* i8,
                                                       const bf16::Kernels* b16) const;
};

}  // namespace fastrnn
