// fastrnn._cuda: thin pybind11 layer over the CUDA driver (driver.h). Compiled by the host
// compiler (no CUDA headers); pointers cross as Python ints (device addresses from cudaMalloc,
// torch's data_ptr() or __cuda_array_interface__), 0 meaning "none". fastrnn/core/cuda.py validates
// arguments and owns the allocations; this layer re-checks what it cheaply can, releases the GIL
// and enqueues the work on the given stream (an int cudaStream_t, 0 = the default stream).
//
// Built with FASTRNN_CUDA_EMULATE (tests only) the same source becomes fastrnn_cuda_emu, running
// the kernels on the host emulator.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../bindings/gil.h"
#include "driver.h"
#include "../bindings/plan_object.h"
#ifdef FASTRNN_CUDA_EMULATE
#include "emu.h"
#endif

#ifndef FASTRNN_CUDA_MODULE
#define FASTRNN_CUDA_MODULE _cuda
#endif

namespace py = pybind11;
using fastrnn::Desc;
using i64 = std::int64_t;
using Ptr = std::uintptr_t;
namespace cu = fastrnn::cuda;

namespace {

template <class T>
T* at(Ptr p, const char* name, bool required) {
    if (required && p == 0) throw std::invalid_argument(std::string(name) + " is required");
    return reinterpret_cast<T*>(p);
}

cu::Stream stream_of(Ptr s) { return reinterpret_cast<cu::Stream>(s); }

const fastrnn::Plan& plan_of(const py::object& obj) { return *py::cast<const fastrnn::bindings::PyPlan&>(obj).plan; }

// Device addresses in the plan's parameter order (0 for the buffers' entries of the gradients).
template <class T>
std::vector<T*> pointers(const fastrnn::Plan& p, const py::list& items, const char* what) {
    if (items.size() != p.layout().size())
        throw std::invalid_argument(std::string(what) + ": " + std::to_string(items.size()) + " addresses, expected " +
                                    std::to_string(p.layout().size()));
    std::vector<T*> out;
    for (const auto& item : items) out.push_back(reinterpret_cast<T*>(py::cast<Ptr>(item)));
    return out;
}

template <class T>
void forward_impl(const fastrnn::Plan& p, const Desc& d, bool dropout, Ptr x, const py::list& ws, Ptr h0, Ptr c0,
                  Ptr lengths, Ptr masks, Ptr out, Ptr h_n, Ptr c_n, Ptr cache, Ptr workspace,
                  std::size_t workspace_bytes, Ptr stream) {
    const bool lstm = fastrnn::cell_has_c(d);
    auto W = p.arrange<T>(pointers<T>(p, ws, "weights"));
    const bool train = cache != 0;
    if (train && dropout && d.L > 1 && masks == 0) throw std::invalid_argument("masks is required with dropout");
    const T *px = at<const T>(x, "x", true), *ph0 = at<const T>(h0, "h0", false);
    const T* pc0 = lstm ? at<const T>(c0, "c0", false) : nullptr;
    const i64* plen = at<const i64>(lengths, "lengths", false);
    const T* pm = train && dropout ? at<const T>(masks, "masks", false) : nullptr;
    T *pout = at<T>(out, "out", true), *phn = at<T>(h_n, "h_n", true);
    T* pcn = lstm ? at<T>(c_n, "c_n", true) : nullptr;
    T* pcache = at<T>(cache, "cache", false);
    fastrnn::without_gil([&] {
        cu::forward<T>(d, W.data(), px, ph0, pc0, plen, pm, pout, phn, pcn, pcache, reinterpret_cast<void*>(workspace),
                       workspace_bytes, stream_of(stream));
    });
}

template <class T>
void backward_impl(const fastrnn::Plan& p, const Desc& d, bool dropout, Ptr x, const py::list& ws, Ptr lengths,
                   Ptr masks, Ptr cache, Ptr grad_out, Ptr grad_h_n, Ptr grad_c_n, Ptr grad_x, Ptr grad_h0,
                   Ptr grad_c0, const py::list& gs, bool retain, double bptt_clip, Ptr grad_h_sq, Ptr grad_c_sq,
                   Ptr carried_sq, Ptr prev_state_sq, Ptr workspace, std::size_t workspace_bytes, Ptr stream) {
    const bool lstm = fastrnn::cell_has_c(d);
    auto W = p.arrange<T>(pointers<T>(p, ws, "weights"));
    auto G = p.grads<T>(pointers<T>(p, gs, "grads"));
    if (dropout && d.L > 1 && masks == 0) throw std::invalid_argument("masks is required with dropout");
    if ((carried_sq == 0) != (prev_state_sq == 0))
        throw std::invalid_argument("carried_sq and prev_state_sq go together");
    fastrnn::BackwardOptions<T> opt;
    opt.retain = retain;
    opt.bptt_clip = T(bptt_clip);
    opt.diag.grad_h_sq = at<double>(grad_h_sq, "grad_h_sq", false);
    opt.diag.grad_c_sq = lstm ? at<double>(grad_c_sq, "grad_c_sq", false) : nullptr;
    opt.diag.carried_sq = at<double>(carried_sq, "carried_sq", false);
    opt.diag.prev_state_sq = at<double>(prev_state_sq, "prev_state_sq", false);
    const T* px = at<const T>(x, "x", true);
    const i64* plen = at<const i64>(lengths, "lengths", false);
    const T* pm = dropout ? at<const T>(masks, "masks", false) : nullptr;
    T* pcache = at<T>(cache, "cache", true);
    const T *pgo = at<const T>(grad_out, "grad_out", false), *pghn = at<const T>(grad_h_n, "grad_h_n", false);
    const T* pgcn = lstm ? at<const T>(grad_c_n, "grad_c_n", false) : nullptr;
    T *pgx = at<T>(grad_x, "grad_x", true), *pgh0 = at<T>(grad_h0, "grad_h0", true);
    T* pgc0 = lstm ? at<T>(grad_c0, "grad_c0", true) : nullptr;
    fastrnn::without_gil([&] {
        cu::backward<T>(d, W.data(), px, plen, pm, pcache, pgo, pghn, pgcn, pgx, pgh0, pgc0, G.data(), opt,
                        reinterpret_cast<void*>(workspace), workspace_bytes, stream_of(stream));
    });
}

py::buffer_info contiguous_buffer(const py::buffer& b, bool writable, const char* what) {
    py::buffer_info info = b.request(writable);
    i64 expect = info.itemsize;
    for (i64 k = info.ndim - 1; k >= 0; --k) {  // C-contiguous
        if (info.shape[std::size_t(k)] > 1 && info.strides[std::size_t(k)] != expect)
            throw std::invalid_argument(std::string(what) + ": the host array must be C-contiguous");
        expect *= info.shape[std::size_t(k)];
    }
    return info;
}

}  // namespace

PYBIND11_MODULE(FASTRNN_CUDA_MODULE, m) {
    m.doc() = "fastrnn CUDA backend (internal; use fastrnn.cuda)";
    m.def("backend", &cu::backend);
    m.def("device_count", [] {
        std::string why;
        const int n = cu::device_count(&why);
        return py::make_tuple(n, why);
    });
    m.def("runtime_version", &cu::runtime_version);
    m.def("driver_version", &cu::driver_version);
    m.def("device_name", &cu::device_name);
    m.def("device_capability", &cu::device_capability);
    m.def("get_device", &cu::get_device);
    m.def("set_device", &cu::set_device);
    m.def("malloc", [](std::size_t bytes) { return Ptr(cu::device_malloc(bytes)); });
    m.def("free", [](Ptr p) { cu::device_free(reinterpret_cast<void*>(p)); });
    m.def("zero", [](Ptr dst, std::size_t bytes, Ptr stream) {
        cu::zero(reinterpret_cast<void*>(dst), bytes, stream_of(stream));
    });
    m.def("synchronize", [](Ptr stream) { fastrnn::without_gil([&] { cu::synchronize(stream_of(stream)); }); });
    // Host <-> device copies of whole C-contiguous host buffers; both return when the host
    // buffer may be reused (to_host: when the data has arrived).
    m.def("copy_to_device", [](Ptr dst, const py::buffer& src, Ptr stream) {
        py::buffer_info info = contiguous_buffer(src, false, "copy_to_device");
        fastrnn::without_gil([&] {
            cu::copy(reinterpret_cast<void*>(dst), info.ptr, std::size_t(info.size * info.itemsize),
                     stream_of(stream));
            cu::synchronize(stream_of(stream));
        });
    });
    m.def("copy_to_host", [](const py::buffer& dst, Ptr src, Ptr stream) {
        py::buffer_info info = contiguous_buffer(dst, true, "copy_to_host");
        fastrnn::without_gil([&] {
            cu::copy(info.ptr, reinterpret_cast<const void*>(src), std::size_t(info.size * info.itemsize),
                     stream_of(stream));
            cu::synchronize(stream_of(stream));
        });
    });
    m.def("copy", [](Ptr dst, Ptr src, std::size_t bytes, Ptr stream) {
        cu::copy(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes, stream_of(stream));
    });
    m.def("copy_strided", [](Ptr dst, Ptr src, const std::vector<i64>& shape, const std::vector<i64>& strides,
                             int itemsize, Ptr stream) {
        if (shape.size() != strides.size())
            throw std::invalid_argument("copy_strided: shape and strides differ in length");
        cu::copy_strided(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), int(shape.size()),
                         shape.data(), strides.data(), itemsize, stream_of(stream));
    });
#ifdef FASTRNN_CUDA_EMULATE
    // The emulator's schedule (csrc/cuda/emu.h): seed of the block order and thread switches,
    // and whether cooperative launches are refused (as on a GPU shared under MPS).
    m.def("_emu_set_schedule", &cu::emu::set_schedule, py::arg("seed"), py::arg("refuse_cooperative") = false);
    m.def("_emu_refused_launches", &cu::emu::refused_launches);
#endif
    // The plan (fastrnn._C.Plan) describes the layer stack; T and N are the call's.
    m.def("forward_workspace_bytes", [](const py::object& plan, i64 T, i64 N, bool training) {
        const fastrnn::Plan& p = plan_of(plan);
        return cu::forward_workspace_bytes(p.call(T, N), training, p.is_double());
    });
    m.def("backward_workspace_bytes", [](const py::object& plan, i64 T, i64 N, bool retain, bool diagnostics) {
        const fastrnn::Plan& p = plan_of(plan);
        return cu::backward_workspace_bytes(p.call(T, N), retain, diagnostics, p.is_double());
    });
    m.def("uses_persistent", [](const py::object& plan, i64 T, i64 N, bool forward, bool diagnostics) {
        const fastrnn::Plan& p = plan_of(plan);
        return cu::uses_persistent(p.call(T, N), forward, diagnostics, p.is_double());
    });
    m.def("forward",
          [](const py::object& plan, i64 T, i64 N, bool dropout, Ptr x, py::list ws, Ptr h0, Ptr c0, Ptr lengths,
             Ptr masks, Ptr out, Ptr h_n, Ptr c_n, Ptr cache, Ptr workspace, std::size_t workspace_bytes, Ptr stream) {
              const fastrnn::Plan& p = plan_of(plan);
              const Desc d = p.call(T, N);
              if (p.is_double())
                  forward_impl<double>(p, d, dropout, x, ws, h0, c0, lengths, masks, out, h_n, c_n, cache, workspace,
                                       workspace_bytes, stream);
              else
                  forward_impl<float>(p, d, dropout, x, ws, h0, c0, lengths, masks, out, h_n, c_n, cache, workspace,
                                      workspace_bytes, stream);
          });
    m.def("backward",
          [](const py::object& plan, i64 T, i64 N, bool dropout, Ptr x, py::list ws, Ptr lengths, Ptr masks, Ptr cache,
             Ptr grad_out, Ptr grad_h_n, Ptr grad_c_n, Ptr grad_x, Ptr grad_h0, Ptr grad_c0, py::list gs, bool retain,
             double bptt_clip, Ptr grad_h_sq, Ptr grad_c_sq, Ptr carried_sq, Ptr prev_state_sq, Ptr workspace,
             std::size_t workspace_bytes, Ptr stream) {
              const fastrnn::Plan& p = plan_of(plan);
              const Desc d = p.call(T, N);
              if (p.is_double())
                  backward_impl<double>(p, d, dropout, x, ws, lengths, masks, cache, grad_out, grad_h_n, grad_c_n,
                                        grad_x, grad_h0, grad_c0, gs, retain, bptt_clip, grad_h_sq, grad_c_sq,
                                        carried_sq, prev_state_sq, workspace, workspace_bytes, stream);
              else
                  backward_impl<float>(p, d, dropout, x, ws, lengths, masks, cache, grad_out, grad_h_n, grad_c_n,
                                       grad_x, grad_h0, grad_c0, gs, retain, bptt_clip, grad_h_sq, grad_c_sq,
                                       carried_sq, prev_state_sq, workspace, workspace_bytes, stream);
          });
}
