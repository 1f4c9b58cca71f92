// Thin pybind11 layer: re-check what Python validated (cheaply), release the GIL, call the core.
// Arrays come in already allocated and typed by fastrnn/core/validation.py and fastrnn/core/functional.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cblas.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <stdexcept>
#include <string>
#include <vector>

#include "fastrnn/fastrnn.h"  // the version macros only

#include "../core/driver.h"
#include "../core/plan.h"
#include "arrays.h"
#include "plan_object.h"
#include "../core/threads.h"
#include "../dispatch/dispatch.h"
#include "gil.h"

namespace py = pybind11;
using fastrnn::Desc;
using i64 = std::int64_t;

void register_optim(py::module_& m);  // csrc/bindings/optim.cpp
void register_stream(py::module_& m);  // csrc/bindings/stream.cpp

namespace {

using fastrnn::Plan;
using fastrnn::bindings::PyPlan;
using fastrnn::Role;

using fastrnn::bindings::holds;

// The kernels of a reduced-precision test hook's `path`: "active" (what the plans use now),
// "portable", or a native path by its name, on a CPU that has its instructions.
template <class Kernels>
struct NativePath {
    const char* name;
    bool has;
    const Kernels& (*get)();
};
template <class Kernels>
const Kernels& precision_path(const std::string& path, const char* kind, const Kernels& active, const Kernels& portable,
                              const std::vector<NativePath<Kernels>>& natives) {
    if (path == "active") return active;
    if (path == "portable") return portable;
    std::string names = "active, portable";
    for (const auto& n : natives) {
        if (path == n.name) {
            if (!n.has) throw std::invalid_argument(std::string(kind) + " path '" + path + "': this CPU does not have it");
            return n.get();
        }
        names += std::string(", ") + n.name;
    }
    throw std::invalid_argument(std::string(kind) + " path '" + path + "': expected " + names);
}
const fastrnn::bf16::Kernels& bf16_path(const std::string& path) {
    std::vector<NativePath<fastrnn::bf16::Kernels>> natives;
#if defined(__x86_64__) || defined(_M_X64)
    const auto isas = fastrnn::available_isas();
    const auto has = [&](const char* isa) { return std::find(isas.begin(), isas.end(), isa) != isas.end(); };
    natives.push_back({"avx512_bf16", fastrnn::precision_features().avx512_bf16, &fastrnn::bf16::avx512_bf16_kernels});
    natives.push_back({"avx512_fma", has("avx512"), &fastrnn::bf16::avx512_fma_kernels});
    natives.push_back({"avx2_fma", has("avx2"), &fastrnn::bf16::avx2_fma_kernels});
#endif
    natives.push_back({"amx_model", true, &fastrnn::bf16::amx_model_kernels});
#if defined(__x86_64__) || defined(_M_X64)
    natives.push_back({"amx_bf16", fastrnn::amx_enabled(), &fastrnn::bf16::amx_kernels});
#endif
    return precision_path(path, "bf16", fastrnn::bf16_kernels(), fastrnn::bf16::portable_kernels(), natives);
}
const fastrnn::int8::Kernels& int8_path(const std::string& path) {
    std::vector<NativePath<fastrnn::int8::Kernels>> natives;
#if defined(__x86_64__) || defined(_M_X64)
    const fastrnn::PrecisionFeatures f = fastrnn::precision_features();
    const auto isas = fastrnn::available_isas();
    const bool avx2 = std::find(isas.begin(), isas.end(), "avx2") != isas.end();
    natives.push_back({"avx512_vnni", f.avx512_vnni, &fastrnn::int8::avx512_vnni_kernels});
    natives.push_back({"avx_vnni", f.avx_vnni && avx2, &fastrnn::int8::avx_vnni_kernels});
#endif
    return precision_path(path, "int8", fastrnn::int8_kernels(), fastrnn::int8::portable_kernels(), natives);
}

// Checks dtype, C-contiguity and element count of an array handed over by Python; null for None.
template <class T>
T* data_of(const py::object& obj, const std::string& name, i64 size, bool writable, bool required = true) {
    if (obj.is_none()) {
        if (required) throw std::invalid_argument(name + " is required");
        return nullptr;
    }
    auto a = py::cast<py::array>(obj);
    if (!holds<T>(a))
        throw py::type_error(name + ": dtype " + std::string(py::str(a.dtype())) + ", expected " +
                             std::string(py::str(py::dtype::of<T>())));
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(name + ": must be C-contiguous");
    if (a.size() != size)
        throw std::invalid_argument(name + ": has " + std::to_string(a.size()) + " elements, expected " +
                                    std::to_string(size));
    if (writable && !a.writeable()) throw std::invalid_argument(name + ": must be writable");
    return static_cast<T*>(const_cast<void*>(a.data()));
}

i64 elements(const fastrnn::ParamInfo& p) {
    i64 n = 1;
    for (i64 s : p.shape) n *= s;
    return n;
}

// The regularizers' noise of one call (training masks, or zoneout's inference rates).
template <class T>
fastrnn::Noise<T> noise_of(const fastrnn::Desc& d, const py::object& rec_mask, const py::object& zh_mask,
                           const py::object& zc_mask, double zh_rate, double zc_rate, const py::object& w_mask,
                           const py::object& cand_mask) {
    const fastrnn::CellInfo& c = fastrnn::cell_info(d);
    const i64 S = d.L * d.D, K = fastrnn::state_size(d), GH = c.gates * d.H;
    fastrnn::Noise<T> nz;
    nz.rec_mask = data_of<T>(rec_mask, "rec_mask", S * d.N * K, false, false);
    nz.zh_mask = data_of<T>(zh_mask, "zoneout_h mask", S * d.T * d.N * K, false, false);
    nz.zc_mask = data_of<T>(zc_mask, "zoneout_c mask", S * d.T * d.N * d.H, false, false);
    nz.zh_rate = T(zh_rate);
    nz.zc_rate = T(zc_rate);
    nz.w_mask = data_of<T>(w_mask, "weight_drop mask", S * GH * K, false, false);
    nz.cand_mask = data_of<T>(cand_mask, "candidate mask", S * d.N * d.H, false, false);
    const std::string cell = c.name;
    if (nz.rec_mask && !(c.variants & fastrnn::kRecurrentDropout)) throw std::invalid_argument("rec_mask: not for " + cell);
    if ((nz.zh_mask || zh_rate > 0) && !(c.variants & fastrnn::kZoneout))
        throw std::invalid_argument("zoneout: not for " + cell);
    if ((nz.zc_mask || zc_rate > 0) && !d.zoneout_c)
        throw std::invalid_argument("zoneout on c needs the zoneout_c variant (its cache layout)");
    if ((nz.zh_mask || nz.zc_mask) && (zh_rate > 0 || zc_rate > 0))
        throw std::invalid_argument("zoneout takes masks (training) or rates (inference), not both");
    if (nz.w_mask && !(c.variants & fastrnn::kWeightDrop)) throw std::invalid_argument("w_mask: not for " + cell);
    if (nz.cand_mask && !(c.variants & fastrnn::kCandidateDropout))
        throw std::invalid_argument("cand_mask: not for " + cell);
    return nz;
}

const i64* lengths_of(const fastrnn::Desc& d, const py::object& obj) {
    const i64* p = data_of<i64>(obj, "lengths", d.N, false, false);
    if (p)
        for (i64 n = 0; n < d.N; ++n)
            if (p[n] < 1 || p[n] > d.T) throw std::invalid_argument("lengths: values must be in [1, T]");
    return p;
}

// T, N of a call from x [T, N, C].
std::pair<i64, i64> sizes_of(const Plan& p, const py::object& x) {
    auto a = py::cast<py::array>(x);
    if (a.ndim() != 3 || a.shape(2) != p.config().C)
        throw std::invalid_argument("x: expected shape (T, N, C=" + std::to_string(p.config().C) + ")");
    return {i64(a.shape(0)), i64(a.shape(1))};
}

template <class T>
void set_weights_impl(PyPlan& self, const py::list& arrays) {
    const auto& layout = self.plan->layout();
    if (arrays.size() != layout.size())
        throw std::invalid_argument("set_weights: " + std::to_string(arrays.size()) + " arrays, expected " +
                                    std::to_string(layout.size()));
    std::vector<T*> ptrs;
    for (std::size_t i = 0; i < layout.size(); ++i)
        ptrs.push_back(data_of<T>(arrays[i], layout[i].name, elements(layout[i]), layout[i].buffer));
    self.plan->set_weights<T>(ptrs);
    self.arrays = arrays;
}

template <class T>
void forward_impl(PyPlan& self, const py::object& x, const py::object& out, const py::object& h_n,
                  const py::object& c_n, const py::object& h0, const py::object& c0, const py::object& lengths,
                  const py::object& cache, const py::object& masks, const py::object& rec_mask,
                  const py::object& zh_mask, const py::object& zc_mask, double zh_rate, double zc_rate,
                  const py::object& w_mask, const py::object& cand_mask, bool use_packed, bool bn_frozen,
                  const std::string& precision_name) {
    const Plan& p = *self.plan;
    const auto [T_, N] = sizes_of(p, x);
    fastrnn::Desc d = p.call(T_, N);
    d.bn_frozen = bn_frozen;
    const bool lstm = fastrnn::cell_has_c(d), dropout = !masks.is_none();
    const i64 K = fastrnn::state_size(d), S = d.L * d.D * d.N * K, SC = d.L * d.D * d.N * d.H, TN = d.T * d.N;
    auto W = p.weights<T>();  // a copy: another thread may set new weights while this call runs
    if (W.empty()) throw std::invalid_argument("forward: the plan has no weights (set_weights)");
    py::object keep = self.arrays;  // released after the GIL is back (declared before `release`)
    const auto nz = noise_of<T>(d, rec_mask, zh_mask, zc_mask, zh_rate, zc_rate, w_mask, cand_mask);
    const T* px = data_of<T>(x, "x", TN * d.C, false);
    const T* ph0 = data_of<T>(h0, "h0", S, false, false);
    const T* pc0 = lstm ? data_of<T>(c0, "c0", SC, false, false) : nullptr;
    const i64* plen = lengths_of(d, lengths);
    T* pcache = data_of<T>(cache, "cache", fastrnn::cache_elements(d, dropout), true, false);
    const T* pm = data_of<T>(masks, "masks", (d.L - 1) * TN * d.D * K, false, false);
    if (pm && !pcache) throw std::invalid_argument("masks: dropout masks are for training calls (with a cache)");
    T* pout = data_of<T>(out, "out", TN * d.D * K, true);
    T* phn = data_of<T>(h_n, "h_n", S, true);
    T* pcn = lstm ? data_of<T>(c_n, "c_n", SC, true) : nullptr;
    const fastrnn::Precision precision = fastrnn::bindings::precision_of(precision_name);
    if (precision != fastrnn::Precision::Float && (nz.w_mask || p.is_double()))
        throw std::invalid_argument("forward: " + precision_name + " runs calls of a float32 plan without a "
                                    "weight_drop mask");
    if (precision == fastrnn::Precision::Int8 && pcache)
        throw std::invalid_argument("forward: int8 runs inference calls (no cache); training computes in float32 or "
                                    "bfloat16");
    std::shared_ptr<const fastrnn::PackedWeights<T>> packed;
    std::shared_ptr<const fastrnn::ReducedWeights> low;
    fastrnn::without_gil([&] {
        const fastrnn::KernelSet<T>& ks = fastrnn::active_kernels<T>();
        if (precision == fastrnn::Precision::Int8)  // quantized once while the weights are unchanged
            low = self.plan->reduced(ks.nr, fastrnn::int8_kernels());
        else if (precision == fastrnn::Precision::BF16)
            low = self.plan->reduced(ks.nr, fastrnn::bf16_kernels());
        else if (use_packed && !pcache && !nz.w_mask)  // inference: W_hh packed once while unchanged
            packed = self.plan->packed<T>(ks.nr, ks.pack_forward);
        fastrnn::forward<T>(d, W.data(), px, ph0, pc0, plen, pm, pout, phn, pcn, pcache, nz, packed.get(), false,
                            low.get());
    });
}

template <class T>
void backward_impl(PyPlan& self, const py::object& x, const py::object& cache, const py::object& grad_out,
                   const py::object& grad_h_n, const py::object& grad_c_n, const py::object& grad_x,
                   const py::object& grad_h0, const py::object& grad_c0, const py::list& grads,
                   const py::object& lengths, const py::object& masks, bool retain, double bptt_clip,
                   const py::object& grad_h_sq, const py::object& grad_c_sq, const py::object& carried_sq,
                   const py::object& prev_state_sq, const py::object& rec_mask, const py::object& zh_mask,
                   const py::object& zc_mask, double zh_rate, double zc_rate, const py::object& w_mask,
                   const py::object& cand_mask, bool bn_frozen, const std::string& precision_name) {
    const Plan& p = *self.plan;
    const auto [T_, N] = sizes_of(p, x);
    fastrnn::Desc d = p.call(T_, N);
    d.bn_frozen = bn_frozen;
    const bool lstm = fastrnn::cell_has_c(d), dropout = !masks.is_none();
    const i64 K = fastrnn::state_size(d), S = d.L * d.D * d.N * K, SC = d.L * d.D * d.N * d.H, TN = d.T * d.N;
    const i64 steps = d.L * d.D * d.T;
    auto W = p.weights<T>();
    if (W.empty()) throw std::invalid_argument("backward: the plan has no weights (set_weights)");
    py::object keep = self.arrays;
    const auto& layout = p.layout();
    if (grads.size() != layout.size())
        throw std::invalid_argument("grads: " + std::to_string(grads.size()) + " arrays, expected " +
                                    std::to_string(layout.size()));
    std::vector<T*> gptrs;
    for (std::size_t i = 0; i < layout.size(); ++i)
        gptrs.push_back(layout[i].buffer ? nullptr
                                         : data_of<T>(grads[i], "grads[" + layout[i].name + "]", elements(layout[i]), true));
    const auto G = p.grads<T>(gptrs);
    const T* px = data_of<T>(x, "x", TN * d.C, false);
    const i64* plen = lengths_of(d, lengths);
    const T* pm = data_of<T>(masks, "masks", (d.L - 1) * TN * d.D * K, false, false);
    T* pcache = data_of<T>(cache, "cache", fastrnn::cache_elements(d, dropout), !retain);
    const T* pgo = data_of<T>(grad_out, "grad_output", TN * d.D * K, false, false);
    const T* pghn = data_of<T>(grad_h_n, "grad_h_n", S, false, false);
    const T* pgcn = lstm ? data_of<T>(grad_c_n, "grad_c_n", SC, false, false) : nullptr;
    T* pgx = data_of<T>(grad_x, "grad_x", TN * d.C, true);
    T* pgh0 = data_of<T>(grad_h0, "grad_h0", S, true);
    T* pgc0 = lstm ? data_of<T>(grad_c0, "grad_c0", SC, true) : nullptr;
    fastrnn::BackwardOptions<T> opt;
    opt.retain = retain;
    opt.bptt_clip = T(bptt_clip);
    opt.diag.grad_h_sq = data_of<double>(grad_h_sq, "grad_h_sq", steps, true, false);
    opt.diag.grad_c_sq = lstm ? data_of<double>(grad_c_sq, "grad_c_sq", steps, true, false) : nullptr;
    opt.diag.carried_sq = data_of<double>(carried_sq, "carried_sq", steps, true, false);
    opt.diag.prev_state_sq = data_of<double>(prev_state_sq, "prev_state_sq", steps, true, false);
    if (!opt.diag.carried_sq != !opt.diag.prev_state_sq)
        throw std::invalid_argument("carried_sq and prev_state_sq go together");
    opt.noise = noise_of<T>(d, rec_mask, zh_mask, zc_mask, zh_rate, zc_rate, w_mask, cand_mask);
    const fastrnn::Precision precision = fastrnn::bindings::precision_of(precision_name);
    if (precision == fastrnn::Precision::Int8)
        throw std::invalid_argument("backward: int8 has no gradients (inference only)");
    opt.bf16 = precision == fastrnn::Precision::BF16;
    if (opt.bf16 && (p.is_double() || opt.noise.w_mask))
        throw std::invalid_argument("backward: bfloat16 runs calls of a float32 plan without a weight_drop mask");
    fastrnn::without_gil(
        [&] { fastrnn::backward<T>(d, W.data(), px, plen, pm, pcache, pgo, pghn, pgcn, pgx, pgh0, pgc0, G.data(), opt); });
}

template <class T>
py::tuple forward_stats_impl(const fastrnn::Desc& d, bool dropout, const py::object& cache, const py::object& lengths,
                             const py::object& saturation) {
    const T* pcache = data_of<T>(cache, "cache", fastrnn::cache_elements(d, dropout), false);
    const i64* plen = lengths_of(d, lengths);
    double* psat = data_of<double>(saturation, "saturation", d.L * d.D * d.T * fastrnn::saturation_stats(d), true,
                                   false);
    fastrnn::NonFinite f;
    fastrnn::without_gil([&] { f = fastrnn::forward_stats<T>(d, pcache, plen, dropout, psat); });
    return py::make_tuple(f.layer, f.direction, f.t, f.what);
}

const char* saturation_kind(fastrnn::Saturation s) {
    switch (s) {
        case fastrnn::Saturation::Sigmoid: return "sigmoid";
        case fastrnn::Saturation::Tanh: return "tanh";
        case fastrnn::Saturation::Dead: return "dead";
        case fastrnn::Saturation::Activation: return "activation";
    }
    return "";
}

// The cell table as Python sees it (fastrnn/cells.py).
py::list cell_table() {
    py::list rows;
    for (const fastrnn::CellInfo& c : fastrnn::kCellTable) {
        py::dict r;
        r["name"] = c.name;
        r["code"] = int(c.kind);
        r["reset_after"] = c.reset_after;
        r["gates"] = c.gates;
        py::list gates, sat, kinds;
        for (int q = 0; q < c.gates; ++q) gates.append(c.gate_names[q]);
        for (int q = 0; q < c.n_saturation; ++q) {
            sat.append(c.saturation_names[q]);
            kinds.append(saturation_kind(c.saturation[q]));
        }
        r["gate_names"] = py::tuple(gates);
        r["has_c"] = c.has_c;
        r["saturation"] = py::tuple(sat);
        r["saturation_kinds"] = py::tuple(kinds);
        py::dict v;
        const std::pair<const char*, unsigned> bits[] = {
            {"proj_size", fastrnn::kProjection}, {"peephole", fastrnn::kPeephole},
            {"layer_norm", fastrnn::kLayerNorm}, {"zoneout_h", fastrnn::kZoneout},
            {"zoneout_c", fastrnn::kZoneoutC}, {"recurrent_dropout", fastrnn::kRecurrentDropout},
            {"weight_drop", fastrnn::kWeightDrop}, {"normalization", fastrnn::kInputNorm},
            {"candidate_dropout", fastrnn::kCandidateDropout}};
        for (const auto& [name, bit] : bits) v[name] = bool(c.variants & bit);
        r["variants"] = v;
        rows.append(r);
    }
    return rows;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "fastrnn C++ core (internal; use the fastrnn package)";
    m.attr("version") = std::to_string(FASTRNN_VERSION_MAJOR) + "." + std::to_string(FASTRNN_VERSION_MINOR) + "." +
                        std::to_string(FASTRNN_VERSION_PATCH);
    m.attr("abi_version") = FASTRNN_ABI_VERSION;
    m.def("cells", &cell_table);

    // A configured layer stack (csrc/core/plan.h): settings validated once, the weights it reads,
    // then per-call data only. Noise: recurrent dropout / zoneout / DropConnect / candidate masks
    // (training) or zoneout rates (inference).
    py::class_<PyPlan>(m, "Plan")
        .def(py::init([](int cell, bool reset_after, bool bias, i64 input_size, i64 hidden_size, i64 num_layers,
                         i64 num_directions, const std::string& dtype, i64 proj_size, bool peephole, bool layer_norm,
                         bool zoneout_c, int activation, int input_norm, double momentum, bool recurrent_affine) {
                 if (dtype != "float32" && dtype != "float64")
                     throw py::type_error("dtype: " + dtype + ", expected float32 or float64");
                 if (cell < 0 || cell >= fastrnn::kCellKinds)
                     throw std::invalid_argument("cell: unknown cell kind " + std::to_string(cell));
                 fastrnn::Desc d;
                 d.cell = fastrnn::CellKind(cell);
                 d.reset_after = reset_after;
                 d.bias = bias;
                 d.C = input_size; d.H = hidden_size; d.L = num_layers; d.D = num_directions;
                 d.P = proj_size; d.peephole = peephole; d.layer_norm = layer_norm; d.zoneout_c = zoneout_c;
                 d.activation = fastrnn::Activation(activation);
                 d.input_norm = fastrnn::InputNorm(input_norm);
                 d.bn_momentum = momentum;
                 d.recurrent_affine = recurrent_affine;
                 return PyPlan{std::make_shared<Plan>(d, dtype == "float64"), py::list()};
             }),
             py::arg("cell"), py::arg("reset_after"), py::arg("bias"), py::arg("input_size"), py::arg("hidden_size"),
             py::arg("num_layers"), py::arg("num_directions"), py::arg("dtype"), py::arg("proj_size") = 0,
             py::arg("peephole") = false, py::arg("layer_norm") = false, py::arg("zoneout_c") = false,
             py::arg("activation") = 0, py::arg("input_norm") = 0, py::arg("momentum") = 0.05,
             py::arg("recurrent_affine") = false)
        .def_property_readonly("parameters",
                               [](const PyPlan& s) {
                                   py::list out;
                                   for (const auto& p : s.plan->layout())
                                       out.append(py::make_tuple(p.name, py::tuple(py::cast(p.shape)), p.buffer));
                                   return out;
                               })
        .def("set_weights",
             [](PyPlan& s, const py::list& arrays) {
                 if (s.plan->is_double())
                     set_weights_impl<double>(s, arrays);
                 else
                     set_weights_impl<float>(s, arrays);
             })
        .def("cache_size",
             [](const PyPlan& s, i64 T, i64 N, bool dropout) {
                 return fastrnn::cache_elements(s.plan->call(T, N), dropout);
             })
        .def("scratch_size",
             [](const PyPlan& s, i64 T, i64 N, bool training, bool regularized) {
                 const fastrnn::Desc d = s.plan->call(T, N);
                 const int threads = fastrnn::get_num_threads(), nr = fastrnn::active_kernels<float>().nr;
                 return training ? std::max(fastrnn::forward_scratch_elements(d, true, threads, nr, regularized),
                                            fastrnn::backward_scratch_elements(d, false, threads, nr, regularized))
                                 : fastrnn::forward_scratch_elements(d, false, threads, nr, regularized);
             })
        .def_property_readonly("saturation_stats",
                               [](const PyPlan& s) { return fastrnn::saturation_stats(s.plan->call(1, 1)); })
        .def_property_readonly("packed_bytes", [](const PyPlan& s) { return s.plan->packed_bytes(); })
        .def("forward",
             [](PyPlan& s, const py::object& x, const py::object& out, const py::object& h_n, const py::object& c_n,
                const py::object& h0, const py::object& c0, const py::object& lengths, const py::object& cache,
                const py::object& masks, const py::object& rec_mask, const py::object& zh_mask,
                const py::object& zc_mask, double zh_rate, double zc_rate, const py::object& w_mask,
                const py::object& cand_mask, bool packed, bool bn_frozen, const std::string& precision) {
                 if (s.plan->is_double())
                     forward_impl<double>(s, x, out, h_n, c_n, h0, c0, lengths, cache, masks, rec_mask, zh_mask,
                                          zc_mask, zh_rate, zc_rate, w_mask, cand_mask, packed, bn_frozen, precision);
                 else
                     forward_impl<float>(s, x, out, h_n, c_n, h0, c0, lengths, cache, masks, rec_mask, zh_mask,
                                         zc_mask, zh_rate, zc_rate, w_mask, cand_mask, packed, bn_frozen, precision);
             },
             py::arg("x"), py::arg("out"), py::arg("h_n"), py::arg("c_n") = py::none(), py::arg("h0") = py::none(),
             py::arg("c0") = py::none(), py::arg("lengths") = py::none(), py::arg("cache") = py::none(),
             py::arg("masks") = py::none(), py::arg("rec_mask") = py::none(), py::arg("zh_mask") = py::none(),
             py::arg("zc_mask") = py::none(), py::arg("zh_rate") = 0.0, py::arg("zc_rate") = 0.0,
             py::arg("w_mask") = py::none(), py::arg("cand_mask") = py::none(), py::arg("packed") = false,
             py::arg("bn_frozen") = false, py::arg("precision") = "")
        .def("backward",
             [](PyPlan& s, const py::object& x, const py::object& cache, const py::object& grad_out,
                const py::object& grad_h_n, const py::object& grad_c_n, const py::object& grad_x,
                const py::object& grad_h0, const py::object& grad_c0, const py::list& grads, const py::object& lengths,
                const py::object& masks, bool retain, double bptt_clip, const py::object& grad_h_sq,
                const py::object& grad_c_sq, const py::object& carried_sq, const py::object& prev_state_sq,
                const py::object& rec_mask, const py::object& zh_mask, const py::object& zc_mask, double zh_rate,
                double zc_rate, const py::object& w_mask, const py::object& cand_mask, bool bn_frozen,
                const std::string& precision) {
                 if (s.plan->is_double())
                     backward_impl<double>(s, x, cache, grad_out, grad_h_n, grad_c_n, grad_x, grad_h0, grad_c0, grads,
                                           lengths, masks, retain, bptt_clip, grad_h_sq, grad_c_sq, carried_sq,
                                           prev_state_sq, rec_mask, zh_mask, zc_mask, zh_rate, zc_rate, w_mask,
                                           cand_mask, bn_frozen, precision);
                 else
                     backward_impl<float>(s, x, cache, grad_out, grad_h_n, grad_c_n, grad_x, grad_h0, grad_c0, grads,
                                          lengths, masks, retain, bptt_clip, grad_h_sq, grad_c_sq, carried_sq,
                                          prev_state_sq, rec_mask, zh_mask, zc_mask, zh_rate, zc_rate, w_mask,
                                          cand_mask, bn_frozen, precision);
             },
             py::arg("x"), py::arg("cache"), py::arg("grad_out"), py::arg("grad_h_n"), py::arg("grad_c_n"),
             py::arg("grad_x"), py::arg("grad_h0"), py::arg("grad_c0"), py::arg("grads"),
             py::arg("lengths") = py::none(), py::arg("masks") = py::none(), py::arg("retain") = false,
             py::arg("bptt_clip") = 0.0, py::arg("grad_h_sq") = py::none(), py::arg("grad_c_sq") = py::none(),
             py::arg("carried_sq") = py::none(), py::arg("prev_state_sq") = py::none(),
             py::arg("rec_mask") = py::none(), py::arg("zh_mask") = py::none(), py::arg("zc_mask") = py::none(),
             py::arg("zh_rate") = 0.0, py::arg("zc_rate") = 0.0, py::arg("w_mask") = py::none(),
             py::arg("cand_mask") = py::none(), py::arg("bn_frozen") = false, py::arg("precision") = "")
        .def("forward_stats",
             [](const PyPlan& s, const py::object& cache, i64 T, i64 N, const py::object& lengths,
                const py::object& saturation, bool dropout) {
                 const fastrnn::Desc d = s.plan->call(T, N);
                 return s.plan->is_double() ? forward_stats_impl<double>(d, dropout, cache, lengths, saturation)
                                            : forward_stats_impl<float>(d, dropout, cache, lengths, saturation);
             },
             py::arg("cache"), py::arg("T"), py::arg("N"), py::arg("lengths"), py::arg("saturation"),
             py::arg("dropout"));
    m.def("_activation", [](const std::string& name, py::array x) {
        // Test hook: the active ISA's activation function, elementwise on a contiguous array.
        const int fn = name == "sigmoid" ? 0 : name == "tanh" ? 1 : name == "relu" ? 2 : -1;
        if (fn < 0) throw std::invalid_argument("_activation: unknown function " + name);
        if (!(x.flags() & py::array::c_style)) throw std::invalid_argument("_activation: x must be C-contiguous");
        if (holds<float>(x)) {
            py::array_t<float> y(x.size());
            fastrnn::active_kernels<float>().activation(fn, static_cast<const float*>(x.data()), y.mutable_data(),
                                                        x.size());
            return py::array(y);
        }
        if (holds<double>(x)) {
            py::array_t<double> y(x.size());
            fastrnn::active_kernels<double>().activation(fn, static_cast<const double*>(x.data()), y.mutable_data(),
                                                         x.size());
            return py::array(y);
        }
        throw py::type_error("_activation: x must be float32 or float64");
    });
    m.def("get_isa", &fastrnn::get_isa);
    m.def("available_isas", &fastrnn::available_isas);
    m.def("set_isa", &fastrnn::set_isa);
    m.def("precision_features", [] {
        const fastrnn::PrecisionFeatures f = fastrnn::precision_features();
        py::dict d;
        d["avx512_bf16"] = f.avx512_bf16;
        d["amx_bf16"] = f.amx_bf16;
        d["avx512_vnni"] = f.avx512_vnni;
        d["avx_vnni"] = f.avx_vnni;
        return d;
    });
    // Test and bench hooks of the bf16 and int8 building blocks (csrc/kernels/bf16.h, int8.h).
    // `path`: "active" (what the plans use now), "portable" or a native path's name.
    m.def("_bf16_path", [] { return std::string(fastrnn::bf16_kernels().name); });
    m.def("enable_amx", [](bool on) { return fastrnn::enable_amx(on); }, py::arg("on"),
          "Turns the AMX-BF16 path on or off; returns '' when done, else why not (csrc/dispatch/dispatch.h).");
    m.def("amx_enabled", &fastrnn::amx_enabled);
    m.def("_use_amx_model", &fastrnn::use_amx_model, py::arg("on"));
    m.def("_bf16_round", [](py::array_t<float, py::array::c_style | py::array::forcecast> x, const std::string& path) {
        const auto& k = bf16_path(path);
        py::array_t<std::uint16_t> out(x.request().shape);
        k.round(x.data(), x.size(), out.mutable_data());
        return out;
    }, py::arg("x"), py::arg("path") = "active");
    m.def("_bf16_pack", [](py::array_t<float, py::array::c_style | py::array::forcecast> w) {
        if (w.ndim() != 2) throw std::invalid_argument("_bf16_pack: w must be 2-D [rows, depth]");
        py::array_t<std::uint16_t> out(fastrnn::bf16::packed_elements(w.shape(0), w.shape(1)));
        fastrnn::bf16::pack(w.data(), w.shape(0), w.shape(1), w.shape(1), out.mutable_data());
        return out;
    });
    m.def("_bf16_gemm", [](py::array_t<std::uint16_t, py::array::c_style> a, py::array_t<std::uint16_t, py::array::c_style> packed,
                           py::array_t<float, py::array::c_style> c, bool accumulate, const std::string& path) {
        // c [N, cols] (+)= a [N, depth] (bf16, depth even) x W^T, W packed by _bf16_pack (panels of 16
        // rows: cols rounded up)
        const std::int64_t cols = c.ndim() == 2 ? c.shape(1) : -1, panels = fastrnn::bf16::panel_count(cols);
        if (a.ndim() != 2 || c.ndim() != 2 || a.shape(0) != c.shape(0) || a.shape(1) % 2 || cols < 1 ||
            packed.size() != a.shape(1) * 16 * panels)
            throw std::invalid_argument("_bf16_gemm: expected a [N, depth even], packed [16*panels*depth], c [N, cols] "
                                        "with panels = ceil(cols / 16)");
        const auto& k = bf16_path(path);
        const std::int64_t N = a.shape(0), depth = a.shape(1);
        const std::uint16_t* ap = a.data();
        const std::uint16_t* wp = packed.data();
        float* cp = c.mutable_data();
        fastrnn::without_gil([&] { k.gemm(N, depth, ap, depth, wp, panels, cols, cp, cols, accumulate); });
    }, py::arg("a"), py::arg("packed"), py::arg("c").noconvert(), py::arg("accumulate") = false, py::arg("path") = "active");
    m.def("_int8_path", [] { return std::string(fastrnn::int8_kernels().name); });
    m.def("_int8_quantize_weights", [](py::array_t<float, py::array::c_style | py::array::forcecast> w) {
        // -> (packed int8, scale [panels*16], wsum [panels*16]) of W [rows, depth]
        if (w.ndim() != 2) throw std::invalid_argument("_int8_quantize_weights: w must be 2-D [rows, depth]");
        const std::int64_t rows = w.shape(0), depth = w.shape(1), cols = fastrnn::int8::panel_count(rows) * 16;
        py::array_t<std::int8_t> packed(fastrnn::int8::packed_elements(rows, depth));
        py::array_t<float> scale(cols);
        py::array_t<std::int32_t> wsum(cols);
        fastrnn::int8::quantize_weights(w.data(), rows, depth, depth, packed.mutable_data(), scale.mutable_data(),
                                        wsum.mutable_data());
        return py::make_tuple(packed, scale, wsum);
    });
    m.def("_int8_quantize_rows", [](py::array_t<float, py::array::c_style | py::array::forcecast> x, const std::string& path) {
        // -> (codes uint8 [N, depth rounded up to 4], scales [N]) of x [N, depth]
        if (x.ndim() != 2) throw std::invalid_argument("_int8_quantize_rows: x must be 2-D [N, depth]");
        const auto& k = int8_path(path);
        const std::int64_t N = x.shape(0), depth = x.shape(1), dp = fastrnn::int8::padded_depth(depth);
        py::array_t<std::uint8_t> q({N, dp});
        py::array_t<float> t(N);
        k.quantize_rows(N, depth, x.data(), depth, q.mutable_data(), dp, t.mutable_data());
        return py::make_tuple(q, t);
    }, py::arg("x"), py::arg("path") = "active");
    m.def("_int8_gemm", [](py::array_t<std::uint8_t, py::array::c_style> q, py::array_t<float, py::array::c_style> t,
                           py::array_t<std::int8_t, py::array::c_style> packed, py::array_t<float, py::array::c_style> scale,
                           py::array_t<std::int32_t, py::array::c_style> wsum, py::array_t<float, py::array::c_style> c,
                           bool accumulate, const std::string& path) {
        // c [N, cols] (+)= dequantized product of codes q [N, depth] and the first `cols` rows of
        // the quantized W (panels of 16 rows: cols rounded up)
        const std::int64_t N = q.ndim() == 2 ? q.shape(0) : -1, depth = q.ndim() == 2 ? q.shape(1) : -1;
        const std::int64_t cols = c.ndim() == 2 ? c.shape(1) : -1, panels = fastrnn::int8::panel_count(cols);
        if (N < 0 || depth % 4 || depth > fastrnn::int8::kMaxDepth || c.ndim() != 2 || c.shape(0) != N || cols < 1 ||
            t.size() != N || packed.size() != depth * 16 * panels || scale.size() != 16 * panels ||
            wsum.size() != 16 * panels)
            throw std::invalid_argument("_int8_gemm: expected q [N, depth a multiple of 4, <= 65536 (kMaxDepth)], t [N], "
                                        "packed [16*panels*depth], scale and wsum [16*panels], c [N, cols] with "
                                        "panels = ceil(cols / 16)");
        const auto& k = int8_path(path);
        const std::uint8_t* qp = q.data();
        const float *tp = t.data(), *sp = scale.data();
        const std::int8_t* wp = packed.data();
        const std::int32_t* ws = wsum.data();
        float* cp = c.mutable_data();
        fastrnn::without_gil([&] { k.gemm(N, depth, qp, depth, tp, wp, sp, ws, panels, cols, cp, cols, accumulate); });
    }, py::arg("q"), py::arg("t"), py::arg("packed"), py::arg("scale"), py::arg("wsum"), py::arg("c").noconvert(),
       py::arg("accumulate") = false, py::arg("path") = "active");
    m.def("set_num_threads", [](int n) {
        if (n < 1) throw std::invalid_argument("set_num_threads: n must be >= 1, got " + std::to_string(n));
        fastrnn::set_num_threads(n);  // also caps the BLAS threads of the large hoisted GEMMs (core/blas.h)
    });
    m.def("get_num_threads", &fastrnn::get_num_threads);
    // fastrnn.torch: run the calling thread's parallel regions on torch's OpenMP runtime (its
    // GOMP_parallel, omp_get_thread_num and omp_get_num_threads, by address) while `on`.
    m.def("_use_foreign_omp", [](bool on, std::uintptr_t parallel, std::uintptr_t thread_num, std::uintptr_t team_size) {
        static fastrnn::ForeignOmp omp{};
        if (on && !omp.parallel) {  // set once (under the GIL): kernels on other threads may read it
            if (!parallel || !thread_num || !team_size) throw std::invalid_argument("_use_foreign_omp: null entry point");
            omp = fastrnn::ForeignOmp{reinterpret_cast<decltype(omp.parallel)>(parallel),
                                      reinterpret_cast<decltype(omp.thread_num)>(thread_num),
                                      reinterpret_cast<decltype(omp.team_size)>(team_size)};
        }
        return fastrnn::set_thread_omp(on ? &omp : nullptr) != nullptr;
    }, py::arg("on"), py::arg("parallel") = 0, py::arg("thread_num") = 0, py::arg("team_size") = 0);
    // Test hooks: the calling thread's parallel regions as (what, asked, ran, on) while recording
    // (on=True clears and starts, on=False stops and returns them); the recurrent steps' back-off
    // to one thread (set it off, get the previous setting); the threads a step may use now.
    m.def("_record_regions", [](bool on) {
        fastrnn::record_regions(on);
        py::list out;
        for (const auto& r : fastrnn::recorded_regions()) out.append(py::make_tuple(r.what, r.asked, r.ran, r.on));
        return out;
    });
    m.def("_set_thread_backoff", &fastrnn::set_backoff);
    m.def("_step_threads", &fastrnn::step_threads);
    m.def("_report_waits", &fastrnn::report_waits, py::arg("wait_ns"), py::arg("region_ns"), py::arg("threads"),
          py::arg("passes") = 1);
    // The pool's waits since the last reset: regions, waited ns, thread-ns in regions, back-offs.
    m.def("_wait_stats", [](bool reset) {
        const fastrnn::WaitStats s = fastrnn::wait_stats(reset);
        return py::make_tuple(s.regions, s.wait_ns, s.thread_ns, s.backoffs);
    }, py::arg("reset") = false);
    m.def("_barrier_ns", &fastrnn::barrier_ns, py::arg("threads") = 2, py::arg("rounds") = 2000,
          py::call_guard<py::gil_scoped_release>());
    // The AVX-512 microkernel's rows per register block (6 or 8; 0 sets the detected value).
    m.def("_microkernel_rows", &fastrnn::microkernel_rows);
    m.def("_set_microkernel_rows", &fastrnn::set_microkernel_rows);
    // Where the hoisted input products of long sequences run now: "own" (the microkernel) or
    // "blas"; the setter also takes "detect".
    m.def("_input_gemm", [] { return std::string(fastrnn::own_input_gemm() ? "own" : "blas"); });
    m.def("_set_input_gemm", &fastrnn::set_input_gemm);
    // Whether mapping[names[i]] is sources[i] for every i: identity, not equality (a replaced
    // array of equal values is a new array), False for a missing name or a mapping that is not a
    // dict. A layer's check that its plan's arrays were not replaced, at every call: 0.12 us where
    // an itemgetter and all(map(operator.is_, ...)) took 0.35 (Zen 3, 4 arrays).
    m.def("_same_entries", [](py::handle mapping, py::handle names, py::handle sources) {
        if (!PyDict_Check(mapping.ptr()) || !PyTuple_Check(names.ptr()) || !PyTuple_Check(sources.ptr()) ||
            PyTuple_GET_SIZE(names.ptr()) != PyTuple_GET_SIZE(sources.ptr()))
            return false;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names.ptr()); ++i) {
            PyObject* value = PyDict_GetItemWithError(mapping.ptr(), PyTuple_GET_ITEM(names.ptr(), i));
            if (!value) {
                if (PyErr_Occurred()) throw py::error_already_set();  // an unhashable key: not ours
                return false;
            }
            if (value != PyTuple_GET_ITEM(sources.ptr(), i)) return false;
        }
        return true;
    });
    register_optim(m);
    register_stream(m);
}
