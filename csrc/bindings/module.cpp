// Thin pybind11 layer: re-check what Python validated (cheaply), release the GIL, call the core.
// Arrays come in already allocated and typed by fastrnn/_validation.py and fastrnn/functional.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cblas.h>

#include <optional>
#include <tuple>
#include <stdexcept>
#include <string>
#include <vector>

#include "../core/driver.h"
#include "../core/threads.h"
#include "../dispatch/dispatch.h"
#include "gil.h"

namespace py = pybind11;
using fastrnn::Desc;
using i64 = std::int64_t;

void register_optim(py::module_& m);  // csrc/bindings/optim.cpp

namespace {

// Cell variants as Python passes them: (proj_size, peephole, layer_norm, zoneout_c).
using Variant = std::tuple<i64, bool, bool, bool>;

Desc make_desc(int cell, bool reset_after, bool bias, i64 T, i64 N, i64 C, i64 H, i64 L, i64 D,
               const Variant& v = Variant{0, false, false, false}) {
    if (cell < 0 || cell > 3) throw std::invalid_argument("cell: unknown cell kind " + std::to_string(cell));
    if (T <= 0 || N <= 0 || C <= 0 || H <= 0 || L <= 0 || (D != 1 && D != 2))
        throw std::invalid_argument("sizes must be positive and D in {1, 2}");
    Desc d;
    d.cell = fastrnn::CellKind(cell);
    d.reset_after = reset_after;
    d.bias = bias;
    d.T = T; d.N = N; d.C = C; d.H = H; d.L = L; d.D = D;
    std::tie(d.P, d.peephole, d.layer_norm, d.zoneout_c) = v;
    const bool lstm = d.cell == fastrnn::CellKind::LSTM, gru = d.cell == fastrnn::CellKind::GRU;
    if (d.P < 0 || (d.P > 0 && !lstm)) throw std::invalid_argument("proj_size: only LSTM has a projection");
    if ((d.peephole || d.zoneout_c) && !lstm) throw std::invalid_argument("peephole/zoneout_c: LSTM only");
    if (d.layer_norm && !(lstm || (gru && reset_after)))
        throw std::invalid_argument("layer_norm: LSTM and GRU (reset_after) only");
    if (d.layer_norm && (d.P > 0 || d.peephole))
        throw std::invalid_argument("layer_norm: not combined with a projection or peepholes");
    return d;
}

// Checks dtype, C-contiguity and element count of an array handed over by Python; null for None.
template <class T>
T* data_of(const py::object& obj, const char* name, i64 size, bool writable, bool required = true) {
    if (obj.is_none()) {
        if (required) throw std::invalid_argument(std::string(name) + " is required");
        return nullptr;
    }
    auto a = py::cast<py::array>(obj);
    if (!a.dtype().is(py::dtype::of<T>()))
        throw py::type_error(std::string(name) + ": dtype " + std::string(py::str(a.dtype())) + ", expected " +
                             std::string(py::str(py::dtype::of<T>())));
    if (!(a.flags() & py::array::c_style))
        throw std::invalid_argument(std::string(name) + ": must be C-contiguous");
    if (a.size() != size)
        throw std::invalid_argument(std::string(name) + ": has " + std::to_string(a.size()) + " elements, expected " +
                                    std::to_string(size));
    if (writable && !a.writeable()) throw std::invalid_argument(std::string(name) + ": must be writable");
    return static_cast<T*>(const_cast<void*>(a.data()));
}

// One tuple per layer-direction: (w_ih, w_hh, b_ih, b_hh[, w_hr, w_peep, ln_ih, ln_hh, ln_c_w,
// ln_c_b]); the variant entries are None when the variant is off.
template <class P>
struct Entries {
    P w_ih, w_hh, b_ih, b_hh, w_hr = nullptr, w_peep = nullptr, ln_ih = nullptr, ln_hh = nullptr, ln_c_w = nullptr,
                                ln_c_b = nullptr;
};

template <class T, class P>
Entries<P> entries_of(const Desc& d, const py::handle& item, i64 i, bool writable, const char* what) {
    const i64 G = fastrnn::cell_gates(d), GH = G * d.H, K = fastrnn::state_size(d);
    const i64 C_l = i < d.D ? d.C : d.D * K;
    auto t = py::cast<py::tuple>(item);
    const bool lstm = fastrnn::cell_has_c(d);
    if (t.size() != 4 && t.size() != 10)
        throw std::invalid_argument(std::string(what) + ": expected tuples of 4 or 10 entries");
    auto get = [&](std::size_t k) -> py::object { return k < t.size() ? py::object(t[k]) : py::object(py::none()); };
    auto arr = [&](std::size_t k, const char* name, i64 n, bool required) {
        return static_cast<P>(data_of<T>(get(k), name, n, writable, required));
    };
    Entries<P> e{arr(0, "weight_ih", GH * C_l, true), arr(1, "weight_hh", GH * K, true),
                 arr(2, "bias_ih", GH, d.bias), arr(3, "bias_hh", GH, d.bias)};
    if (d.P > 0) e.w_hr = arr(4, "weight_hr", d.P * d.H, true);
    if (d.peephole) e.w_peep = arr(5, "weight_peephole", 3 * d.H, true);
    if (d.layer_norm) {
        e.ln_ih = arr(6, "ln_ih_weight", GH, true);
        e.ln_hh = arr(7, "ln_hh_weight", GH, true);
        if (lstm) {
            e.ln_c_w = arr(8, "ln_c_weight", d.H, true);
            e.ln_c_b = arr(9, "ln_c_bias", d.H, true);
        }
    }
    return e;
}

template <class T>
std::vector<fastrnn::LayerWeights<T>> weights_of(const Desc& d, const py::list& ws) {
    if (i64(ws.size()) != d.L * d.D) throw std::invalid_argument("weights: expected one entry per layer-direction");
    std::vector<fastrnn::LayerWeights<T>> out;
    for (i64 i = 0; i < d.L * d.D; ++i) {
        auto e = entries_of<T, const T*>(d, ws[i], i, false, "weights");
        out.push_back({e.w_ih, e.w_hh, e.b_ih, e.b_hh, e.w_hr, e.w_peep, e.ln_ih, e.ln_hh, e.ln_c_w, e.ln_c_b});
    }
    return out;
}

template <class T>
std::vector<fastrnn::LayerGrads<T>> grads_of(const Desc& d, const py::list& gs) {
    if (i64(gs.size()) != d.L * d.D) throw std::invalid_argument("grads: expected one entry per layer-direction");
    std::vector<fastrnn::LayerGrads<T>> out;
    for (i64 i = 0; i < d.L * d.D; ++i) {
        auto e = entries_of<T, T*>(d, gs[i], i, true, "grads");
        out.push_back({e.w_ih, e.w_hh, e.b_ih, e.b_hh, e.w_hr, e.w_peep, e.ln_ih, e.ln_hh, e.ln_c_w, e.ln_c_b});
    }
    return out;
}

// Regularizer noise: (rec_mask, zh_mask, zc_mask, zh_rate, zc_rate, w_mask), or None.
template <class T>
fastrnn::Noise<T> noise_of(const Desc& d, const py::object& obj) {
    fastrnn::Noise<T> nz;
    if (obj.is_none()) return nz;
    auto t = py::cast<py::tuple>(obj);
    if (t.size() != 6) throw std::invalid_argument("noise: expected a tuple of 6 entries");
    const i64 S = d.L * d.D, K = fastrnn::state_size(d), GH = fastrnn::cell_gates(d) * d.H;
    nz.rec_mask = data_of<T>(t[0], "rec_mask", S * d.N * K, false, false);
    nz.zh_mask = data_of<T>(t[1], "zoneout_h mask", S * d.T * d.N * K, false, false);
    nz.zc_mask = data_of<T>(t[2], "zoneout_c mask", S * d.T * d.N * d.H, false, false);
    nz.zh_rate = T(py::cast<double>(t[3]));
    nz.zc_rate = T(py::cast<double>(t[4]));
    nz.w_mask = data_of<T>(t[5], "weight_drop mask", S * GH * K, false, false);
    if ((nz.zc_mask || nz.zc_rate > T(0)) && !d.zoneout_c)
        throw std::invalid_argument("noise: zoneout on c needs the zoneout_c variant (its cache layout)");
    if ((nz.zh_mask || nz.zc_mask) && (nz.zh_rate > T(0) || nz.zc_rate > T(0)))
        throw std::invalid_argument("noise: zoneout takes masks (training) or rates (inference), not both");
    if (nz.zc_rate > T(0) && d.cell != fastrnn::CellKind::LSTM)
        throw std::invalid_argument("noise: zoneout on c is for LSTM");
    const bool rnn = d.cell == fastrnn::CellKind::RNN_TANH || d.cell == fastrnn::CellKind::RNN_RELU;
    if (rnn && (nz.zh_mask || nz.zh_rate > T(0))) throw std::invalid_argument("noise: zoneout is for LSTM and GRU");
    return nz;
}

const i64* lengths_of(const Desc& d, const py::object& obj) {
    const i64* p = data_of<i64>(obj, "lengths", d.N, false, false);
    if (p)
        for (i64 n = 0; n < d.N; ++n)
            if (p[n] < 1 || p[n] > d.T) throw std::invalid_argument("lengths: values must be in [1, T]");
    return p;
}

template <class T>
void forward_impl(const Desc& d, bool dropout, const py::object& x, const py::list& ws, const py::object& h0,
                  const py::object& c0, const py::object& lengths, const py::object& masks, const py::object& out,
                  const py::object& h_n, const py::object& c_n, const py::object& cache, const py::object& noise) {
    const bool lstm = fastrnn::cell_has_c(d);
    const i64 K = fastrnn::state_size(d), S = d.L * d.D * d.N * K, SC = d.L * d.D * d.N * d.H, TN = d.T * d.N;
    auto W = weights_of<T>(d, ws);
    const auto nz = noise_of<T>(d, noise);
    const T* px = data_of<T>(x, "x", TN * d.C, false);
    const T* ph0 = data_of<T>(h0, "h0", S, false, false);
    const T* pc0 = lstm ? data_of<T>(c0, "c0", SC, false, false) : nullptr;
    const i64* plen = lengths_of(d, lengths);
    T* pcache = data_of<T>(cache, "cache", fastrnn::cache_elements(d, dropout), true, false);
    const T* pm = (pcache && dropout) ? data_of<T>(masks, "masks", (d.L - 1) * TN * d.D * K, false) : nullptr;
    T* pout = data_of<T>(out, "out", TN * d.D * K, true);
    T* phn = data_of<T>(h_n, "h_n", S, true);
    T* pcn = lstm ? data_of<T>(c_n, "c_n", SC, true) : nullptr;
    fastrnn::without_gil([&] { fastrnn::forward<T>(d, W.data(), px, ph0, pc0, plen, pm, pout, phn, pcn, pcache, nz); });
}

template <class T>
void backward_impl(const Desc& d, bool dropout, const py::object& x, const py::list& ws, const py::object& lengths,
                   const py::object& masks, const py::object& cache, const py::object& grad_out,
                   const py::object& grad_h_n, const py::object& grad_c_n, const py::object& grad_x,
                   const py::object& grad_h0, const py::object& grad_c0, const py::list& gs, bool retain,
                   double bptt_clip, const py::object& grad_h_sq, const py::object& grad_c_sq,
                   const py::object& carried_sq, const py::object& prev_state_sq, const py::object& noise) {
    const bool lstm = fastrnn::cell_has_c(d);
    const i64 K = fastrnn::state_size(d), S = d.L * d.D * d.N * K, SC = d.L * d.D * d.N * d.H, TN = d.T * d.N;
    const i64 steps = d.L * d.D * d.T;
    auto W = weights_of<T>(d, ws);
    auto G = grads_of<T>(d, gs);
    const T* px = data_of<T>(x, "x", TN * d.C, false);
    const i64* plen = lengths_of(d, lengths);
    const T* pm = dropout ? data_of<T>(masks, "masks", (d.L - 1) * TN * d.D * K, false) : nullptr;
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
    opt.noise = noise_of<T>(d, noise);
    fastrnn::without_gil(
        [&] { fastrnn::backward<T>(d, W.data(), px, plen, pm, pcache, pgo, pghn, pgcn, pgx, pgh0, pgc0, G.data(), opt); });
}

template <class T>
py::tuple forward_stats_impl(const Desc& d, bool dropout, const py::object& cache, const py::object& lengths,
                             const py::object& saturation) {
    const T* pcache = data_of<T>(cache, "cache", fastrnn::cache_elements(d, dropout), false);
    const i64* plen = lengths_of(d, lengths);
    double* psat = data_of<double>(saturation, "saturation", d.L * d.D * d.T * fastrnn::saturation_stats(d), true,
                                   false);
    fastrnn::NonFinite f;
    fastrnn::without_gil([&] { f = fastrnn::forward_stats<T>(d, pcache, plen, dropout, psat); });
    return py::make_tuple(f.layer, f.direction, f.t, f.what);
}

bool is_double(const py::object& x) {
    auto a = py::cast<py::array>(x);
    if (a.dtype().is(py::dtype::of<double>())) return true;
    if (a.dtype().is(py::dtype::of<float>())) return false;
    throw py::type_error("x: dtype " + std::string(py::str(a.dtype())) + ", expected float32 or float64");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "fastrnn C++ core (internal; use the fastrnn package)";

    // `variant` = (proj_size, peephole, layer_norm, zoneout_c); `noise` = (rec_mask, zh_mask,
    // zc_mask, zh_rate, zc_rate, w_mask) or None.
    const Variant plain{0, false, false, false};
    m.def("cache_size",
          [](int cell, bool reset_after, bool bias, i64 T, i64 N, i64 C, i64 H, i64 L, i64 D, bool dropout,
             const Variant& v) {
              return fastrnn::cache_elements(make_desc(cell, reset_after, bias, T, N, C, H, L, D, v), dropout);
          },
          py::arg("cell"), py::arg("reset_after"), py::arg("bias"), py::arg("T"), py::arg("N"), py::arg("C"),
          py::arg("H"), py::arg("L"), py::arg("D"), py::arg("dropout"), py::arg("variant") = plain);
    m.def("scratch_size",
          [](int cell, bool reset_after, bool bias, i64 T, i64 N, i64 C, i64 H, i64 L, i64 D, bool training,
             const Variant& v, bool regularized) {
              Desc d = make_desc(cell, reset_after, bias, T, N, C, H, L, D, v);
              const int threads = fastrnn::get_num_threads(), nr = fastrnn::active_kernels<float>().nr;
              return training ? std::max(fastrnn::forward_scratch_elements(d, true, threads, nr, regularized),
                                         fastrnn::backward_scratch_elements(d, false, threads, nr, regularized))
                              : fastrnn::forward_scratch_elements(d, false, threads, nr, regularized);
          },
          py::arg("cell"), py::arg("reset_after"), py::arg("bias"), py::arg("T"), py::arg("N"), py::arg("C"),
          py::arg("H"), py::arg("L"), py::arg("D"), py::arg("training"), py::arg("variant") = plain,
          py::arg("regularized") = false);
    m.def("forward",
          [](int cell, bool reset_after, bool bias, i64 T, i64 N, i64 C, i64 H, i64 L, i64 D, bool dropout,
             py::object x, py::list ws, py::object h0, py::object c0, py::object lengths, py::object masks,
             py::object out, py::object h_n, py::object c_n, py::object cache, const Variant& v, py::object noise) {
              Desc d = make_desc(cell, reset_after, bias, T, N, C, H, L, D, v);
              if (is_double(x))
                  forward_impl<double>(d, dropout, x, ws, h0, c0, lengths, masks, out, h_n, c_n, cache, noise);
              else
                  forward_impl<float>(d, dropout, x, ws, h0, c0, lengths, masks, out, h_n, c_n, cache, noise);
          },
          py::arg("cell"), py::arg("reset_after"), py::arg("bias"), py::arg("T"), py::arg("N"), py::arg("C"),
          py::arg("H"), py::arg("L"), py::arg("D"), py::arg("dropout"), py::arg("x"), py::arg("ws"), py::arg("h0"),
          py::arg("c0"), py::arg("lengths"), py::arg("masks"), py::arg("out"), py::arg("h_n"), py::arg("c_n"),
          py::arg("cache"), py::arg("variant") = plain, py::arg("noise") = py::none());
    m.def("backward",
          [](int cell, bool reset_after, bool bias, i64 T, i64 N, i64 C, i64 H, i64 L, i64 D, bool dropout,
             py::object x, py::list ws, py::object lengths, py::object masks, py::object cache, py::object grad_out,
             py::object grad_h_n, py::object grad_c_n, py::object grad_x, py::object grad_h0, py::object grad_c0,
             py::list gs, bool retain, double bptt_clip, py::object grad_h_sq, py::object grad_c_sq,
             py::object carried_sq, py::object prev_state_sq, const Variant& v, py::object noise) {
              Desc d = make_desc(cell, reset_after, bias, T, N, C, H, L, D, v);
              if (is_double(x))
                  backward_impl<double>(d, dropout, x, ws, lengths, masks, cache, grad_out, grad_h_n, grad_c_n,
                                        grad_x, grad_h0, grad_c0, gs, retain, bptt_clip, grad_h_sq, grad_c_sq,
                                        carried_sq, prev_state_sq, noise);
              else
                  backward_impl<float>(d, dropout, x, ws, lengths, masks, cache, grad_out, grad_h_n, grad_c_n,
                                       grad_x, grad_h0, grad_c0, gs, retain, bptt_clip, grad_h_sq, grad_c_sq,
                                       carried_sq, prev_state_sq, noise);
          },
          py::arg("cell"), py::arg("reset_after"), py::arg("bias"), py::arg("T"), py::arg("N"), py::arg("C"),
          py::arg("H"), py::arg("L"), py::arg("D"), py::arg("dropout"), py::arg("x"), py::arg("ws"),
          py::arg("lengths"), py::arg("masks"), py::arg("cache"), py::arg("grad_out"), py::arg("grad_h_n"),
          py::arg("grad_c_n"), py::arg("grad_x"), py::arg("grad_h0"), py::arg("grad_c0"), py::arg("gs"),
          py::arg("retain") = false, py::arg("bptt_clip") = 0.0, py::arg("grad_h_sq") = py::none(),
          py::arg("grad_c_sq") = py::none(), py::arg("carried_sq") = py::none(), py::arg("prev_state_sq") = py::none(),
          py::arg("variant") = plain, py::arg("noise") = py::none());
    m.def("saturation_stats", [](int cell, bool reset_after) {
        return fastrnn::saturation_stats(make_desc(cell, reset_after, true, 1, 1, 1, 1, 1, 1));
    });
    m.def("forward_stats",
          [](int cell, bool reset_after, bool bias, i64 T, i64 N, i64 C, i64 H, i64 L, i64 D, bool dropout,
             py::object cache, py::object lengths, py::object saturation, const Variant& v) {
              Desc d = make_desc(cell, reset_after, bias, T, N, C, H, L, D, v);
              return is_double(cache) ? forward_stats_impl<double>(d, dropout, cache, lengths, saturation)
                                      : forward_stats_impl<float>(d, dropout, cache, lengths, saturation);
          },
          py::arg("cell"), py::arg("reset_after"), py::arg("bias"), py::arg("T"), py::arg("N"), py::arg("C"),
          py::arg("H"), py::arg("L"), py::arg("D"), py::arg("dropout"), py::arg("cache"), py::arg("lengths"),
          py::arg("saturation"), py::arg("variant") = plain);
    m.def("_activation", [](const std::string& name, py::array x) {
        // Test hook: the active ISA's activation function, elementwise on a contiguous array.
        const int fn = name == "sigmoid" ? 0 : name == "tanh" ? 1 : name == "relu" ? 2 : -1;
        if (fn < 0) throw std::invalid_argument("_activation: unknown function " + name);
        if (!(x.flags() & py::array::c_style)) throw std::invalid_argument("_activation: x must be C-contiguous");
        if (x.dtype().is(py::dtype::of<float>())) {
            py::array_t<float> y(x.size());
            fastrnn::active_kernels<float>().activation(fn, static_cast<const float*>(x.data()), y.mutable_data(),
                                                        x.size());
            return py::array(y);
        }
        if (x.dtype().is(py::dtype::of<double>())) {
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
    register_optim(m);
}
