#include "stream.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "../dispatch/dispatch.h"
#include "driver.h"

namespace fastrnn {

template <class T>
Stream<T>::Stream(std::shared_ptr<const Plan> plan, std::int64_t batch, double zoneout_h, double zoneout_c,
                  Precision precision)
    : plan_(std::move(plan)), N_(batch), precision_(precision) {
    const Desc& d = plan_->config();
    if (plan_->is_double() != std::is_same_v<T, double>)
        throw std::invalid_argument("stream: the plan's dtype differs from the stream's");
    if (precision != Precision::Float && plan_->is_double())
        throw std::invalid_argument("stream: int8 and bf16 streams take a float32 plan");
    if (d.D != 1)
        throw std::invalid_argument("stream: a bidirectional layer cannot stream (its reverse direction reads "
                                    "the sequence from its end, which a stream has not seen yet)");
    if (batch < 1) throw std::invalid_argument("stream: batch must be >= 1, got " + std::to_string(batch));
    const CellInfo& cell = cell_info(d);
    if (zoneout_h < 0 || zoneout_h >= 1 || zoneout_c < 0 || zoneout_c >= 1)
        throw std::invalid_argument("stream: zoneout rates must be in [0, 1)");
    if (zoneout_h > 0 && !(cell.variants & kZoneout))
        throw std::invalid_argument(std::string("stream: zoneout is not for ") + cell.name);
    if (zoneout_c > 0 && !d.zoneout_c)
        throw std::invalid_argument("stream: zoneout on c needs the zoneout_c variant");
    noise_.zh_rate = T(zoneout_h);
    noise_.zc_rate = T(zoneout_c);
    h_.assign(std::size_t(d.L * batch * state_size(d)), T(0));
    if (cell_has_c(d)) c_.assign(std::size_t(d.L * batch * d.H), T(0));
    lengths_.assign(std::size_t(batch), 0);
}

template <class T>
Stream<T>::~Stream() = default;

template <class T>
void Stream<T>::step(const T* x, std::int64_t k, T* out, const std::uint8_t* active) {
    if (plan_->weights_version() != version_) {  // new arrays were set on the plan (allocates, rarely)
        version_ = plan_->weights_version();
        w_ = plan_->weights_copy<T>();
        low_.reset();
    }
    if (w_.empty()) throw std::invalid_argument("stream: the plan has no weights (set them first)");
    const Desc d = plan_->call(k, N_);
    const std::int64_t* lengths = nullptr;
    if (active) {
        for (std::int64_t n = 0; n < N_; ++n) lengths_[std::size_t(n)] = active[n] ? k : 0;
        lengths = lengths_.data();
    }
    std::shared_ptr<const PackedWeights<T>> packed;
    const KernelSet<T>& ks = active_kernels<T>();
    const void* kernels = precision_ == Precision::Int8   ? static_cast<const void*>(&int8_kernels())
                          : precision_ == Precision::BF16 ? static_cast<const void*>(&bf16_kernels())
                                                          : nullptr;
    if (kernels && (!low_ || low_->nr != ks.nr || low_->kernels != kernels))
        low_ = precision_ == Precision::Int8 ? plan_->reduced(ks.nr, int8_kernels()) : plan_->reduced(ks.nr, bf16_kernels());
    if (!in_place() && !kernels)
        packed = plan_->packed<T>(ks.nr, ks.pack_forward);
    // The state is read (h0) before it is written (h_n) layer by layer, so one buffer serves both.
    forward_repeated<T>(kept_, d, w_.data(), x, h_.data(), c(), lengths, out, h_.data(), c(), noise_, packed.get(),
                        in_place(), low_.get());
}

template <class T>
void Stream<T>::reset(const std::int64_t* slots, std::int64_t count) {
    const Desc& d = plan_->config();
    const std::int64_t K = state_size(d), H = d.H;
    if (!slots) {
        std::fill(h_.begin(), h_.end(), T(0));
        std::fill(c_.begin(), c_.end(), T(0));
        return;
    }
    for (std::int64_t i = 0; i < count; ++i)
        if (slots[i] < 0 || slots[i] >= N_)
            throw std::invalid_argument("stream: slot " + std::to_string(slots[i]) + " is outside [0, " +
                                        std::to_string(N_) + ")");
    for (std::int64_t i = 0; i < count; ++i)
        for (std::int64_t l = 0; l < d.L; ++l) {
            std::fill_n(h_.begin() + (l * N_ + slots[i]) * K, K, T(0));
            if (!c_.empty()) std::fill_n(c_.begin() + (l * N_ + slots[i]) * H, H, T(0));
        }
}

template class Stream<float>;
template class Stream<double>;

}  // namespace fastrnn
