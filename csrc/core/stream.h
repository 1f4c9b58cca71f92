// A stream: inference on a plan one step (or a chunk of steps) per call, the state carried from
// one call to the next, for `batch` independent slots (streams) that start and stop on their own.
// What a call would redo each time is done once: the call's descriptor, the state buffers, the
// weights' arrangement, and the step's setup (kernels, thread plan, the workspace and its layout:
// driver.h's forward_repeated). The workspace is the stream's own up to 4 MiB, above that the
// calling thread's kept scratch; a step allocates only when the setup is made again (the chunk
// length settled on another value; the threads, the ISA or the input-product choice changed).
//
// The recurrent products of a few slots read W_hh (and W_hr) row-major in place (rows_gemm), so
// nothing is packed and an update of the weights (the same arrays written, whoever writes them) is
// used by the next step; many slots use the plan's packed copy, which the plan checks against
// the weights at every call (csrc/core/plan.h). A new set of arrays (Plan::set_weights) is picked
// up at the next step. One stream is used by one thread at a time; streams of one plan may step
// concurrently.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "driver.h"
#include "plan.h"

namespace fastrnn {

// Slots up to which a stream reads the weights in place; above, the packed copy (its GEMM reuses
// each weight for more rows, which pays for the plan's check).
constexpr std::int64_t kStreamInPlaceSlots = 8;

template <class T>
class Stream {
   public:
    // Throws std::invalid_argument for a bidirectional plan, batch < 1, a plan of the other dtype,
    // zoneout rates the plan does not take (they give the expected update, as inference calls do).
    // `precision` Int8 or BF16 (a float32 plan; csrc/kernels/reduced.h): the plan's weights in that
    // precision, taken at the first step and again when the plan gets new arrays (set_weights) or
    // the ISA changes, not compared with the weights at every step: that read of W_ih and W_hh
    // (512 KiB at H=128) cost as much as the step. In-place writes to the weights reach a stream
    // made after them.
    Stream(std::shared_ptr<const Plan> plan, std::int64_t batch, double zoneout_h = 0.0, double zoneout_c = 0.0,
           Precision precision = Precision::Float);
    ~Stream();  // in stream.cpp, beside the kept step's type

    // x [k, N, C] -> out [k, N, K] (k >= 1 steps), the state carried. `active` [N] (null: all):
    // only slots with a nonzero entry step; the others keep their state and get zero output rows.
    // Throws std::invalid_argument when the plan has no weights, std::bad_alloc (first step on a
    // thread) when the scratch cannot be allocated.
    void step(const T* x, std::int64_t k, T* out, const std::uint8_t* active = nullptr);
    // Zeroes the state of `count` slots (indices in [0, N); slots null: every slot).
    void reset(const std::int64_t* slots, std::int64_t count);

    T* h() { return h_.data(); }  // [L, N, K]
    T* c() { return c_.empty() ? nullptr : c_.data(); }  // [L, N, H]; null without a cell state
    std::int64_t state_elements() const { return std::int64_t(h_.size()); }
    std::int64_t cell_state_elements() const { return std::int64_t(c_.size()); }
    std::int64_t batch() const { return N_; }
    bool in_place() const { return N_ <= kStreamInPlaceSlots && precision_ == Precision::Float; }
    Precision precision() const { return precision_; }
    const Plan& plan() const { return *plan_; }

   private:
    std::shared_ptr<const Plan> plan_;
    std::int64_t N_;
    Precision precision_;
    Noise<T> noise_;
    std::vector<T> h_, c_;
    std::vector<std::int64_t> lengths_;
    std::vector<LayerWeights<T>> w_;
    std::uint64_t version_ = ~std::uint64_t(0);
    std::shared_ptr<const ReducedWeights> low_;  // the weights in `precision_` (not Float)
    KeptForwardPtr<T> kept_;  // the step's setup and workspace, made at the first step (driver.h)
};

}  // namespace fastrnn
