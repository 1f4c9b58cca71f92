#include "plan.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace fastrnn {

namespace {

using i64 = std::int64_t;

const char* role_prefix(Role r, CellKind cell) {
    const bool ligru = cell == CellKind::LIGRU || cell == CellKind::SLIGRU;
    switch (r) {
        case Role::WeightIH: return "weight_ih";
        case Role::WeightHH: return "weight_hh";
        case Role::BiasIH: return "bias_ih";
        case Role::BiasHH: return "bias_hh";
        case Role::WeightHR: return "weight_hr";
        case Role::Peephole: return "weight_peephole";
        case Role::GainIH: return ligru ? "norm_weight" : "ln_ih_weight";
        case Role::GainHH: return "ln_hh_weight";
        case Role::GainC: return "ln_c_weight";
        case Role::BiasC: return "ln_c_bias";
        case Role::RunningMean: return "norm_running_mean";
        case Role::RunningVar: return "norm_running_var";
    }
    return "";
}

// The Li-GRU names of its biases: the input normalization's shift, the recurrent LayerNorm's.
const char* bias_name(Role r, const Desc& d) {
    const bool ligru = d.cell == CellKind::LIGRU || d.cell == CellKind::SLIGRU;
    if (ligru && r == Role::BiasIH && d.input_norm != InputNorm::None) return "norm_bias";
    if (ligru && r == Role::BiasHH) return "ln_hh_bias";
    return role_prefix(r, d.cell);
}

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument(msg); }

}  // namespace

void validate_config(const Desc& d) {
    if (int(d.cell) < 0 || int(d.cell) >= kCellKinds) bad("cell: unknown cell kind " + std::to_string(int(d.cell)));
    if (d.C < 1 || d.H < 1 || d.L < 1) bad("input_size, hidden_size and num_layers must be >= 1");
    if (d.D != 1 && d.D != 2) bad("num_directions must be 1 or 2");
    const CellInfo& c = cell_info(d);
    const std::string cell = c.name;
    auto refuse = [&](const char* what) { bad(std::string(what) + ": not a variant of " + cell); };
    if (d.P < 0) bad("proj_size must be >= 0");
    if (d.P > 0 && !(c.variants & kProjection)) refuse("proj_size");
    if (d.P >= d.H && d.P > 0) bad("proj_size must be smaller than hidden_size");
    if (d.peephole && !(c.variants & kPeephole)) refuse("peephole");
    if (d.layer_norm && !(c.variants & kLayerNorm)) refuse("layer_norm");
    if (d.layer_norm && (d.P > 0 || d.peephole)) bad("layer_norm: not combined with a projection or peepholes");
    if (d.zoneout_c && !(c.variants & kZoneoutC)) refuse("zoneout_c");
    if (d.input_norm != InputNorm::None && !(c.variants & kInputNorm)) refuse("normalization");
    if (int(d.input_norm) < 0 || int(d.input_norm) > 2) bad("normalization: unknown kind " + std::to_string(int(d.input_norm)));
    if (int(d.activation) < 0 || int(d.activation) > 3) bad("nonlinearity: unknown kind " + std::to_string(int(d.activation)));
    if (d.recurrent_affine && d.cell != CellKind::SLIGRU) refuse("recurrent_elementwise_affine");
    if (!(d.bn_momentum >= 0.0 && d.bn_momentum <= 1.0)) bad("momentum must be in [0, 1]");
    // Every size the layout derives must be an int64 (LSTM(2^62, 2^62) overflowed in
    // parameter_layout: undefined behaviour, caught by UBSan).
    auto mul = [](i64 a, i64 b, const char* what) {
        i64 r;
        if (__builtin_mul_overflow(a, b, &r)) bad(std::string("sizes too large: ") + what + " overflows int64");
        return r;
    };
    const i64 GH = mul(cell_gates(d), d.H, "gates*hidden_size"), K = state_size(d);
    const i64 DK = mul(d.D, K, "num_directions*K");
    const i64 per_layer = mul(GH, std::max(d.C, DK), "a weight matrix's size");
    i64 total = 0;
    if (__builtin_add_overflow(per_layer, mul(GH, K, "W_hh's size"), &total) ||
        __builtin_mul_overflow(total, mul(d.L, d.D, "num_layers*num_directions"), &total))
        bad("sizes too large: the parameter count overflows int64");
}

std::vector<ParamInfo> parameter_layout(const Desc& d) {
    const i64 G = cell_gates(d), H = d.H, GH = G * H, K = state_size(d);
    const bool ligru = d.cell == CellKind::LIGRU || d.cell == CellKind::SLIGRU;
    std::vector<ParamInfo> params, buffers;
    for (i64 l = 0; l < d.L; ++l)
        for (i64 dir = 0; dir < d.D; ++dir) {
            const std::string sfx = "_l" + std::to_string(l) + (dir ? "_reverse" : "");
            const i64 C_l = l == 0 ? d.C : d.D * K;
            auto add = [&](std::vector<ParamInfo>& to, Role r, std::vector<i64> shape) {
                to.push_back(ParamInfo{bias_name(r, d) + sfx, std::move(shape), l, dir, r, &to == &buffers});
            };
            add(params, Role::WeightIH, {GH, C_l});
            add(params, Role::WeightHH, {GH, K});
            if (ligru) {  // the input normalization's gain and shift (or a bias), SLi-GRU's affine LN
                if (d.input_norm != InputNorm::None) add(params, Role::GainIH, {GH});
                if (d.bias) add(params, Role::BiasIH, {GH});
                if (d.recurrent_affine) {
                    add(params, Role::GainHH, {GH});
                    add(params, Role::BiasHH, {GH});
                }
                if (bn_ih(d)) {
                    add(buffers, Role::RunningMean, {GH});
                    add(buffers, Role::RunningVar, {GH});
                }
                continue;
            }
            if (d.bias) {
                add(params, Role::BiasIH, {GH});
                add(params, Role::BiasHH, {GH});
            }
            if (d.P > 0) add(params, Role::WeightHR, {d.P, H});
            if (d.peephole) add(params, Role::Peephole, {3, H});
            if (d.layer_norm) {
                add(params, Role::GainIH, {GH});
                add(params, Role::GainHH, {GH});
                if (cell_has_c(d)) {
                    add(params, Role::GainC, {H});
                    add(params, Role::BiasC, {H});
                }
            }
        }
    params.insert(params.end(), buffers.begin(), buffers.end());
    return params;
}

Plan::Plan(const Desc& config, bool double_precision) : config_(config), double_(double_precision) {
    config_.T = config_.N = 1;
    validate_config(config_);
    layout_ = parameter_layout(config_);
    if (config_.cell == CellKind::SLIGRU && !config_.recurrent_affine) {
        ones_f_.assign(std::size_t(cell_gates(config_) * config_.H), 1.0f);
        ones_d_.assign(std::size_t(cell_gates(config_) * config_.H), 1.0);
    }
}

Desc Plan::call(i64 T, i64 N) const {
    if (T < 1 || N < 1) bad("T and N must be >= 1");
    Desc d = config_;
    d.T = T;
    d.N = N;
    return d;
}

template <class T>
void Plan::set_weights(const std::vector<T*>& arrays) {
    std::vector<LayerWeights<T>> w = arrange(arrays);
    std::lock_guard<std::mutex> lock(mu_);
    if constexpr (std::is_same_v<T, float>) {
        wf_ = std::move(w);
        packed_f_.reset();
        reduced_.reset();
    } else {
        wd_ = std::move(w);
        packed_d_.reset();
    }
    version_.fetch_add(1, std::memory_order_release);
}

namespace {

// Per layer-direction entries (LayerWeights or LayerGrads) pointing into `arrays`, in `layout`
// order; buffers (running statistics) only for the weights. `what` names the arrays in errors.
template <class Entry, class T>
std::vector<Entry> place(const std::vector<ParamInfo>& layout, const Desc& d, const std::vector<T*>& arrays,
                         const char* what) {
    constexpr bool weights = std::is_same_v<Entry, LayerWeights<T>>;
    if (arrays.size() != layout.size())
        bad(std::string(what) + ": " + std::to_string(arrays.size()) + " arrays, expected " +
            std::to_string(layout.size()));
    std::vector<Entry> out(std::size_t(d.L * d.D));
    for (std::size_t i = 0; i < arrays.size(); ++i) {
        const ParamInfo& p = layout[i];
        if (p.buffer && !weights) continue;
        if (!arrays[i]) bad(std::string(what) + ": " + p.name + " is missing");
        Entry& e = out[std::size_t(p.layer * d.D + p.direction)];
        T* a = arrays[i];
        switch (p.role) {
            case Role::WeightIH: e.w_ih = a; break;
            case Role::WeightHH: e.w_hh = a; break;
            case Role::BiasIH: e.b_ih = a; break;
            case Role::BiasHH: e.b_hh = a; break;
            case Role::WeightHR: e.w_hr = a; break;
            case Role::Peephole: e.w_peep = a; break;
            case Role::GainIH: e.ln_ih = a; break;
            case Role::GainHH: e.ln_hh = a; break;
            case Role::GainC: e.ln_c_w = a; break;
            case Role::BiasC: e.ln_c_b = a; break;
            case Role::RunningMean:
                if constexpr (weights) e.bn_mean = a;
                break;
            case Role::RunningVar:
                if constexpr (weights) e.bn_var = a;
                break;
        }
    }
    return out;
}

}  // namespace

template <class T>
std::vector<LayerWeights<T>> Plan::arrange(const std::vector<T*>& arrays) const {
    std::vector<LayerWeights<T>> w = place<LayerWeights<T>>(layout_, config_, arrays, "weights");
    const std::vector<T>& ones = [this]() -> const std::vector<T>& {
        if constexpr (std::is_same_v<T, float>) return ones_f_; else return ones_d_;
    }();
    if (!ones.empty())
        for (auto& e : w) e.ln_hh = ones.data();
    return w;
}

template <class T>
const std::vector<LayerWeights<T>>& Plan::weights() const {
    if constexpr (std::is_same_v<T, float>) return wf_; else return wd_;
}

template <class T>
std::vector<LayerGrads<T>> Plan::grads(const std::vector<T*>& arrays) const {
    return place<LayerGrads<T>>(layout_, config_, arrays, "grads");
}

template <class T>
std::shared_ptr<const PackedWeights<T>> Plan::packed(int nr, void (*pack)(const T*, i64, i64, i64, T*)) const {
    const Desc& d = config_;
    const i64 G = cell_gates(d), H = d.H, K = state_size(d), GH = G * H, nblk = (H + nr - 1) / nr;
    const i64 kblk = (K + nr - 1) / nr, S = d.L * d.D;
    const i64 hh = G * nblk * K * nr, hr = d.P > 0 ? kblk * H * nr : 0;  // packed sizes (pack_forward)
    std::lock_guard<std::mutex> lock(mu_);
    auto& cached = [this]() -> std::shared_ptr<const PackedWeights<T>>& {
        if constexpr (std::is_same_v<T, float>) return packed_f_; else return packed_d_;
    }();
    const std::vector<LayerWeights<T>>& w = weights<T>();
    if (w.empty()) bad("the plan has no weights (set_weights)");
    if (cached && cached->nr == nr) {  // unchanged since packed?
        bool same = true;
        const T* snap = cached->snapshot.data();
        for (i64 s = 0; s < S && same; ++s) {
            same = std::memcmp(w[std::size_t(s)].w_hh, snap, sizeof(T) * std::size_t(GH * K)) == 0;
            snap += GH * K;
            if (same && d.P > 0) {
                same = std::memcmp(w[std::size_t(s)].w_hr, snap, sizeof(T) * std::size_t(d.P * H)) == 0;
                snap += d.P * H;
            }
        }
        if (same) return cached;
    }
    auto p = std::make_shared<PackedWeights<T>>();
    p->nr = nr;
    p->panels.resize(std::size_t(S * (hh + hr)));
    p->snapshot.resize(std::size_t(S * (GH * K + d.P * H)));
    T* panel = p->panels.data();
    T* snap = p->snapshot.data();
    for (i64 s = 0; s < S; ++s) {
        const LayerWeights<T>& e = w[std::size_t(s)];
        pack(e.w_hh, G, H, K, panel);
        p->w_hh.push_back(panel);
        panel += hh;
        std::memcpy(snap, e.w_hh, sizeof(T) * std::size_t(GH * K));
        snap += GH * K;
        if (d.P > 0) {
            pack(e.w_hr, 1, K, H, panel);
            p->w_hr.push_back(panel);
            panel += hr;
            std::memcpy(snap, e.w_hr, sizeof(T) * std::size_t(d.P * H));
            snap += d.P * H;
        } else {
            p->w_hr.push_back(nullptr);
        }
    }
    cached = p;
    return p;
}

namespace {

// Rows of W [G*units, depth] in the float32 kernels' unit blocks (gate g, block b of nr units:
// rows g*units + b*nr + j), gate by gate or block by block (ReducedMatrix), each block padded
// with zero rows to whole int8 panels.
std::vector<float> block_rows(const float* w, i64 G, i64 units, i64 depth, int nr, bool block_major) {
    const i64 nblk = (units + nr - 1) / nr, per = int8::panel_count(nr) * int8::kPanel;  // rows per block
    std::vector<float> out(std::size_t(G * nblk * per * depth), 0.0f);
    for (i64 g = 0; g < G; ++g)
        for (i64 b = 0; b < nblk; ++b) {
            const i64 at = (block_major ? b * G + g : g * nblk + b) * per;
            for (i64 j = 0; j < nr && b * nr + j < units; ++j)
                std::memcpy(&out[std::size_t((at + j) * depth)], w + (g * units + b * nr + j) * depth,
                            sizeof(float) * std::size_t(depth));
        }
    return out;
}

}  // namespace

std::shared_ptr<const ReducedWeights> Plan::reduced(int nr, const int8::Kernels& kernels) const {
    return make_reduced(Precision::Int8, nr, &kernels, nullptr);
}

std::shared_ptr<const ReducedWeights> Plan::reduced(int nr, const bf16::Kernels& kernels) const {
    return make_reduced(Precision::BF16, nr, nullptr, &kernels);
}

std::shared_ptr<const ReducedWeights> Plan::make_reduced(Precision precision, int nr, const int8::Kernels* i8,
                                                         const bf16::Kernels* b16) const {
    const Desc& d = config_;
    const bool int8 = precision == Precision::Int8;
    const char* what = int8 ? "int8" : "bf16";
    if (double_) bad(std::string(what) + " inference takes a float32 plan");
    const i64 G = cell_gates(d), H = d.H, K = state_size(d), GH = G * H, S = d.L * d.D;
    const i64 per = int8::panel_count(nr), nblk = (H + nr - 1) / nr, kblk = (K + nr - 1) / nr;
    constexpr i64 kPanel = ReducedMatrix::kPanel;
    std::lock_guard<std::mutex> lock(mu_);
    const std::vector<LayerWeights<float>>& w = wf_;
    if (w.empty()) bad("the plan has no weights (set_weights)");
    for (i64 s = 0; s < S && int8; ++s) {
        const i64 C_l = s < d.D ? d.C : d.D * K;
        if (std::max({C_l, K, H}) > int8::kMaxDepth)
            bad("int8 inference: rows of at most " + std::to_string(int8::kMaxDepth) + " elements (input_size, " +
                "hidden_size, proj_size)");
    }
    // What each layer-direction packs: W_ih [GH, C_l] in row order, W_hh [G*H, K] and W_hr [K, H]
    // (LSTMP) in unit blocks.
    struct Part { const float* w; i64 rows, depth, G, units; bool blocks; };
    std::vector<Part> parts;
    for (i64 s = 0; s < S; ++s) {
        const LayerWeights<float>& e = w[std::size_t(s)];
        parts.push_back({e.w_ih, GH, s < d.D ? d.C : d.D * K, 1, GH, false});
        parts.push_back({e.w_hh, G * nblk * per * kPanel, K, G, H, true});
        if (d.P > 0) parts.push_back({e.w_hr, kblk * per * kPanel, H, 1, K, true});
    }
    const void* kernels = int8 ? static_cast<const void*>(i8) : static_cast<const void*>(b16);
    auto& cached = reduced_;
    if (cached && cached->precision == precision && cached->nr == nr && cached->kernels == kernels) {
        bool same = true;  // unchanged since packed?
        const float* snap = cached->snapshot.data();
        for (const Part& p : parts) {
            const i64 n = p.G * p.units * p.depth;
            if (!(same = std::memcmp(p.w, snap, sizeof(float) * std::size_t(n)) == 0)) break;
            snap += n;
        }
        if (same) return cached;
    }
    auto q = std::make_shared<ReducedWeights>();
    q->precision = precision;
    q->nr = nr;
    q->kernels = kernels;
    const auto code_bytes = [int8](const Part& p) {
        return int8 ? int8::packed_elements(p.rows, p.depth) : 2 * bf16::packed_elements(p.rows, p.depth);
    };
    i64 codes = 0, cols = 0, snap = 0;
    for (const Part& p : parts) {
        codes += code_bytes(p);
        cols += int8 ? int8::panel_count(p.rows) * kPanel : 0;
        snap += p.G * p.units * p.depth;
    }
    q->codes.resize(std::size_t(codes));
    q->scales.resize(std::size_t(cols));
    q->wsums.resize(std::size_t(cols));
    q->snapshot.resize(std::size_t(snap));
    std::uint8_t* code = q->codes.data();
    float* scale = q->scales.data();
    std::int32_t* wsum = q->wsums.data();
    float* copy = q->snapshot.data();
    for (std::size_t i = 0; i < parts.size(); ++i) {
        const Part& p = parts[i];
        const i64 n = p.G * p.units * p.depth;
        std::memcpy(copy, p.w, sizeof(float) * std::size_t(n));
        copy += n;
        // The 4-gate cells (LSTM) step one unit block of every gate at a time: block-major
        const bool block_major = p.blocks && p.G >= 4;
        const std::vector<float> rows =
            p.blocks ? block_rows(p.w, p.G, p.units, p.depth, nr, block_major) : std::vector<float>();
        const float* src = p.blocks ? rows.data() : p.w;
        ReducedMatrix m;
        m.precision = precision;
        m.int8 = i8, m.bf16 = b16, m.codes = code;
        m.depth = p.depth, m.block_panels = p.blocks ? per : 0, m.gates = p.G, m.block_major = block_major;
        if (int8) {
            int8::quantize_weights(src, p.rows, p.depth, p.depth, reinterpret_cast<std::int8_t*>(code), scale, wsum);
            m.scale = scale, m.wsum = wsum;
            scale += int8::panel_count(p.rows) * kPanel;
            wsum += int8::panel_count(p.rows) * kPanel;
        } else {
            bf16::pack(src, p.rows, p.depth, p.depth, reinterpret_cast<bf16::bf16_t*>(code));
        }
        code += code_bytes(p);
        const std::size_t at = i % (d.P > 0 ? 3 : 2);
        (at == 0 ? q->w_ih : at == 1 ? q->w_hh : q->w_hr).push_back(m);
    }
    cached = q;
    return q;
}

std::size_t Plan::packed_bytes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return (packed_f_ ? packed_f_->bytes() : 0) + (packed_d_ ? packed_d_->bytes() : 0) +
           (reduced_ ? reduced_->bytes() : 0);
}

template void Plan::set_weights<float>(const std::vector<float*>&);
template void Plan::set_weights<double>(const std::vector<double*>&);
template std::vector<LayerWeights<float>> Plan::arrange<float>(const std::vector<float*>&) const;
template std::vector<LayerWeights<double>> Plan::arrange<double>(const std::vector<double*>&) const;
template const std::vector<LayerWeights<float>>& Plan::weights<float>() const;
template const std::vector<LayerWeights<double>>& Plan::weights<double>() const;
template std::vector<LayerGrads<float>> Plan::grads<float>(const std::vector<float*>&) const;
template std::vector<LayerGrads<double>> Plan::grads<double>(const std::vector<double*>&) const;
template std::shared_ptr<const PackedWeights<float>> Plan::packed<float>(int, void (*)(const float*, i64, i64, i64,
                                                                                          float*)) const;
template std::shared_ptr<const PackedWeights<double>> Plan::packed<double>(int, void (*)(const double*, i64, i64, i64,
                                                                                            double*)) const;

}  // namespace fastrnn
