// fastrnn._C.Stream: the core's stream (csrc/core/stream.h) for fastrnn/core/stream.py, which
// checks the layer side (mode, weights, thread) and hands over arrays; here their dtype, layout and
// shapes are checked (every error names the argument) and the step runs without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <chrono>
#include <algorithm>
#include <memory>
#include <vector>
#include <stdexcept>
#include <string>

#include "../core/stream.h"
#include "../dispatch/dispatch.h"
#include "arrays.h"
#include "gil.h"
#include "plan_object.h"

namespace py = pybind11;
using i64 = std::int64_t;

namespace {

using fastrnn::bindings::holds;
using fastrnn::bindings::PyPlan;

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

struct PyStream {
    py::object plan;  // the PyPlan: keeps its weight arrays alive while the stream reads them
    std::shared_ptr<fastrnn::Stream<float>> f;
    std::shared_ptr<fastrnn::Stream<double>> d;
    bool is_double() const { return d != nullptr; }
};

template <class T>
T* checked(const py::object& obj, const char* name, const std::string& dtype, bool writable) {
    auto a = py::cast<py::array>(obj);
    if (!holds<T>(a))
        throw py::type_error(std::string(name) + ": dtype " + std::string(py::str(a.dtype())) + ", expected " + dtype +
                             " (the stream's)");
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(std::string(name) + ": must be C-contiguous");
    if (writable && !a.writeable()) throw std::invalid_argument(std::string(name) + ": must be writable");
    return static_cast<T*>(const_cast<void*>(a.data()));
}

template <class T>
void step_impl(fastrnn::Stream<T>& s, const py::object& x_obj, const py::object& out_obj, const py::object& active) {
    const fastrnn::Desc& cfg = s.plan().config();
    const i64 N = s.batch(), C = cfg.C, K = fastrnn::state_size(cfg);
    const std::string dtype = s.plan().is_double() ? "float64" : "float32";
    auto x = py::cast<py::array>(x_obj), out = py::cast<py::array>(out_obj);
    const bool chunk = x.ndim() == 3;
    if (!(x.ndim() == 2 || chunk) || x.shape(x.ndim() - 1) != C || x.shape(x.ndim() - 2) != N)
        throw std::invalid_argument("x: shape " + shape_str(x) + ", expected (N, C) = (" + std::to_string(N) + ", " +
                                    std::to_string(C) + ") or (k, N, C) for k steps");
    const i64 k = chunk ? i64(x.shape(0)) : 1;
    if (k < 1) throw std::invalid_argument("x: a chunk of 0 steps");
    if (out.ndim() != x.ndim() || (chunk && out.shape(0) != k) || out.shape(out.ndim() - 2) != N ||
        out.shape(out.ndim() - 1) != K)
        throw std::invalid_argument("out: shape " + shape_str(out) + ", expected " +
                                    (chunk ? "(" + std::to_string(k) + ", " : std::string("(")) + std::to_string(N) +
                                    ", " + std::to_string(K) + ")");
    const T* px = checked<T>(x, "x", dtype, false);
    T* pout = checked<T>(out, "out", dtype, true);
    const std::uint8_t* pa = nullptr;
    py::object act_alive;  // what pa points into, until the step has read it (not a py::array(): that allocates one)
    if (!active.is_none()) {
        const auto act = py::cast<py::array>(active);  // a list converts into a new array
        act_alive = act;
        if (act.dtype().kind() != 'b' || act.itemsize() != 1 || act.ndim() != 1 || act.shape(0) != N ||
            !(act.flags() & py::array::c_style))
            throw std::invalid_argument("active: expected a contiguous bool array of shape (" + std::to_string(N) +
                                        ",), got dtype " + std::string(py::str(act.dtype())) + " shape " +
                                        shape_str(act));
        pa = static_cast<const std::uint8_t*>(act.data());
    }
    fastrnn::without_gil([&] { s.step(px, k, pout, pa); });
}

template <class T>
py::array state_view(fastrnn::Stream<T>& s, const py::object& owner, bool cell) {
    const fastrnn::Desc& cfg = s.plan().config();
    const i64 L = cfg.L, N = s.batch(), W = cell ? cfg.H : fastrnn::state_size(cfg);
    T* p = cell ? s.c() : s.h();
    if (!p) return py::array();
    return py::array_t<T>({L, N, W}, p, owner);  // a view: its base keeps the stream alive
}

// Runs `n` steps on x, timing each from C++ (no Python in between): the latency of a step as a C
// caller sees it (bench --streaming), in nanoseconds.
template <class T>
py::array_t<std::int64_t> time_steps(fastrnn::Stream<T>& s, const py::object& x_obj, const py::object& out_obj,
                                     i64 n) {
    step_impl(s, x_obj, out_obj, py::none());  // checks the arrays (and warms up)
    auto x = py::cast<py::array>(x_obj), out = py::cast<py::array>(out_obj);
    const T* px = static_cast<const T*>(x.data());
    T* pout = static_cast<T*>(out.mutable_data());
    const i64 k = x.ndim() == 3 ? i64(x.shape(0)) : 1;
    py::array_t<std::int64_t> ns(n);
    std::int64_t* t = ns.mutable_data();
    fastrnn::without_gil([&] {
        using clock = std::chrono::steady_clock;
        for (i64 i = 0; i < n; ++i) {
            const auto t0 = clock::now();
            s.step(px, k, pout, nullptr);
            t[i] = std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - t0).count();
        }
    });
    return ns;
}

// The fastest of `repeats` timed calls of `pass` (after two warm-up calls), without the GIL, in
// seconds: the probes of a streaming step's bound below.
template <class F>
double best_seconds(i64 repeats, F&& pass) {
    double best = 1e300;
    fastrnn::without_gil([&] {
        for (i64 r = 0; r < repeats + 2; ++r) {
            const auto t0 = std::chrono::steady_clock::now();
            pass();
            const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            if (r >= 2) best = std::min(best, sec);
        }
    });
    return best;
}

// Bytes per second that the active ISA's loads read from a buffer of `nbytes` (float32, read
// `repeats` times after a warm-up; the best pass): the bandwidth bound of a streaming step whose
// weights take as many bytes (they stay in that cache level between steps).
double read_bandwidth(i64 nbytes, i64 repeats) {
    if (nbytes < 64 || repeats < 1) throw std::invalid_argument("_read_bandwidth: nbytes >= 64, repeats >= 1");
    std::vector<float, fastrnn::CacheLineAllocator<float>> buf(std::size_t(nbytes / 4), 1.0f);
    const auto& ks = fastrnn::active_kernels<float>();
    volatile float sink = 0;
    const double best = best_seconds(repeats, [&] { sink = sink + ks.read_sum(buf.data(), i64(buf.size())); });
    return double(buf.size() * 4) / best;
}

// Seconds the active ISA's float32 activations take over one step's gates: `sigmoids` values
// through the sigmoid and `tanhs` through tanh, each array read and written once (in L1; the best
// of `repeats` passes of 8). The pointwise part of a streaming step's bound (bench --streaming): the
// cell's other pointwise work (a few FMAs a unit) is left out.
double activations_seconds(i64 sigmoids, i64 tanhs, i64 repeats) {
    if (sigmoids < 0 || tanhs < 0 || repeats < 1)
        throw std::invalid_argument("_activations_seconds: sigmoids, tanhs >= 0, repeats >= 1");
    std::vector<float, fastrnn::CacheLineAllocator<float>> x(std::size_t(std::max<i64>(sigmoids, tanhs) + 1), 0.5f),
        y(x.size());
    const auto& ks = fastrnn::active_kernels<float>();
    return best_seconds(repeats, [&] {
               for (int i = 0; i < 8; ++i) {  // 8 steps' worth per clock read
                   ks.activation(0, x.data(), y.data(), sigmoids);
                   ks.activation(1, y.data(), x.data(), tanhs);  // reads the sigmoids' output: no dead code
               }
           }) / 8;
}

}  // namespace

void register_stream(py::module_& m) {
    m.def("_activations_seconds", &activations_seconds, py::arg("sigmoids"), py::arg("tanhs"),
          py::arg("repeats") = 200);
    m.def("_read_bandwidth", &read_bandwidth, py::arg("nbytes"), py::arg("repeats") = 50);
    py::class_<PyStream>(m, "Stream")
        .def(py::init([](const py::object& plan_obj, i64 batch, double zoneout_h, double zoneout_c,
                         const std::string& precision) {
                 const PyPlan& p = py::cast<const PyPlan&>(plan_obj);
                 const fastrnn::Precision low = fastrnn::bindings::precision_of(precision);
                 PyStream s{plan_obj, nullptr, nullptr};
                 if (p.plan->is_double())
                     s.d = std::make_shared<fastrnn::Stream<double>>(p.plan, batch, zoneout_h, zoneout_c, low);
                 else
                     s.f = std::make_shared<fastrnn::Stream<float>>(p.plan, batch, zoneout_h, zoneout_c, low);
                 return s;
             }),
             py::arg("plan"), py::arg("batch"), py::arg("zoneout_h") = 0.0, py::arg("zoneout_c") = 0.0,
             py::arg("precision") = "")
        .def("step",
             [](PyStream& s, const py::object& x, const py::object& out, const py::object& active) {
                 if (s.is_double())
                     step_impl(*s.d, x, out, active);
                 else
                     step_impl(*s.f, x, out, active);
             },
             py::arg("x"), py::arg("out"), py::arg("active") = py::none())
        .def("reset",
             [](PyStream& s, const py::object& slots) {
                 const i64* p = nullptr;
                 i64 n = 0;
                 py::object alive;  // what p points into (a default py::array_t would allocate an array)
                 if (!slots.is_none()) {
                     const auto a = py::cast<py::array_t<i64, py::array::c_style | py::array::forcecast>>(slots);
                     alive = a;
                     p = a.data();
                     n = a.size();
                 }
                 if (s.is_double())
                     s.d->reset(p, n);
                 else
                     s.f->reset(p, n);
             },
             py::arg("slots") = py::none())
        .def_property_readonly("h", [](py::object self) {
            PyStream& s = py::cast<PyStream&>(self);
            return s.is_double() ? state_view(*s.d, self, false) : state_view(*s.f, self, false);
        })
        .def_property_readonly("c", [](py::object self) -> py::object {
            PyStream& s = py::cast<PyStream&>(self);
            py::array a = s.is_double() ? state_view(*s.d, self, true) : state_view(*s.f, self, true);
            if (a.ndim() == 0) return py::none();
            return std::move(a);
        })
        .def("time_steps",
             [](PyStream& s, const py::object& x, const py::object& out, i64 n) {
                 return s.is_double() ? time_steps(*s.d, x, out, n) : time_steps(*s.f, x, out, n);
             },
             py::arg("x"), py::arg("out"), py::arg("n"))
        .def_property_readonly("batch", [](const PyStream& s) { return s.is_double() ? s.d->batch() : s.f->batch(); })
        .def_property_readonly("in_place", [](const PyStream& s) {
            return s.is_double() ? s.d->in_place() : s.f->in_place();
        });
}
