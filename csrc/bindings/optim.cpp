// pybind11 layer of the multi-tensor optimizers (csrc/optim). fastrnn/toolkit/optim.py validates and
// builds one OptimTensors per optimizer, once; every step() is then a single call here that
// releases the GIL and updates all tensors in C++.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "../optim/optim.h"
#include "arrays.h"
#include "gil.h"

namespace py = pybind11;
namespace opt = fastrnn::optim;
using i64 = std::int64_t;

namespace {

// Parameters, gradients and state buffers of one optimizer, as raw pointers split by dtype.
// Holds references to the arrays so the pointers stay valid for the optimizer's lifetime.
class OptimTensors {
public:
    // params, grads: lists of arrays; states: list of up to 3 entries, each None (buffer unused)
    // or a list with one array per parameter.
    OptimTensors(const py::list& params, const py::list& grads, const py::list& states) {
        const size_t n = params.size();
        if (grads.size() != n) throw std::invalid_argument("OptimTensors: params and grads differ in length");
        if (states.size() > 3) throw std::invalid_argument("OptimTensors: at most 3 state buffers");
        std::vector<py::list> st;
        for (size_t k = 0; k < states.size(); ++k) {
            has_state_[k] = !states[k].is_none();
            st.push_back(has_state_[k] ? py::cast<py::list>(states[k]) : py::list());
            if (has_state_[k] && st[k].size() != n)
                throw std::invalid_argument("OptimTensors: a state list differs in length from params");
        }
        for (size_t i = 0; i < n; ++i) {
            py::array p = checked(params[i], "param", i, true);
            py::array g = checked(grads[i], "grad", i, false);
            const bool f64 = fastrnn::bindings::holds<double>(p);
            same(p, g, "grad", i);
            void* s[3] = {nullptr, nullptr, nullptr};
            for (size_t k = 0; k < st.size(); ++k) {
                if (!has_state_[k]) continue;
                py::array a = checked(st[k][i], "state", i, true);
                same(p, a, "state", i);
                s[k] = a.mutable_data();
            }
            if (f64)
                f64_.push_back({static_cast<double*>(p.mutable_data()), static_cast<const double*>(g.data()),
                                {static_cast<double*>(s[0]), static_cast<double*>(s[1]), static_cast<double*>(s[2])},
                                i64(p.size())});
            else
                f32_.push_back({static_cast<float*>(p.mutable_data()), static_cast<const float*>(g.data()),
                                {static_cast<float*>(s[0]), static_cast<float*>(s[1]), static_cast<float*>(s[2])},
                                i64(p.size())});
        }
    }

    void require_state(int k, const char* what) const {
        if (!has_state_[k])
            throw std::invalid_argument(std::string("optimizer: the ") + what +
                                        " buffer was not allocated; the option was off when the optimizer was built");
    }

    template <class H>
    void run(void (*f32)(const opt::Slot<float>*, i64, const H&), void (*f64)(const opt::Slot<double>*, i64, const H&),
             const H& h) const {
        fastrnn::without_gil([&] {
            if (!f32_.empty()) f32(f32_.data(), i64(f32_.size()), h);
            if (!f64_.empty()) f64(f64_.data(), i64(f64_.size()), h);
        });
    }

    i64 size() const { return i64(f32_.size() + f64_.size()); }

private:
    py::array checked(const py::handle& obj, const char* what, size_t i, bool writable) {
        if (!py::isinstance<py::array>(obj))
            throw py::type_error(std::string("OptimTensors: ") + what + " " + std::to_string(i) + " is not an ndarray");
        auto a = py::reinterpret_borrow<py::array>(obj);
        if (!fastrnn::bindings::holds<float>(a) && !fastrnn::bindings::holds<double>(a))
            throw py::type_error(std::string("OptimTensors: ") + what + " " + std::to_string(i) +
                                 " has dtype " + std::string(py::str(a.dtype())) + ", expected float32 or float64");
        if (!(a.flags() & py::array::c_style))
            throw std::invalid_argument(std::string("OptimTensors: ") + what + " " + std::to_string(i) +
                                        " is not C-contiguous");
        if (writable && !a.writeable())
            throw std::invalid_argument(std::string("OptimTensors: ") + what + " " + std::to_string(i) +
                                        " is read-only");
        keep_.push_back(a);
        return a;
    }

    static void same(const py::array& p, const py::array& a, const char* what, size_t i) {
        if (fastrnn::bindings::holds<double>(a) != fastrnn::bindings::holds<double>(p) || a.size() != p.size())
            throw std::invalid_argument(std::string("OptimTensors: ") + what + " " + std::to_string(i) +
                                        " differs from its parameter in dtype or size");
    }

    std::vector<opt::Slot<float>> f32_;
    std::vector<opt::Slot<double>> f64_;
    std::vector<py::array> keep_;
    bool has_state_[3] = {false, false, false};
};

}  // namespace

void register_optim(py::module_& m) {
    py::class_<OptimTensors>(m, "OptimTensors")
        .def(py::init<const py::list&, const py::list&, const py::list&>(), py::arg("params"), py::arg("grads"),
             py::arg("states"))
        .def("__len__", &OptimTensors::size);

    m.def(
        "optim_sgd",
        [](const OptimTensors& t, double lr, double momentum, double dampening, bool nesterov, bool first_step,
           double weight_decay, double l1) {
            if (momentum != 0) t.require_state(0, "momentum");
            t.run(&opt::sgd<float>, &opt::sgd<double>,
                  opt::SGD{lr, momentum, dampening, nesterov, first_step, {weight_decay, l1}});
        },
        py::arg("tensors"), py::arg("lr"), py::arg("momentum"), py::arg("dampening"), py::arg("nesterov"),
        py::arg("first_step"), py::arg("weight_decay"), py::arg("l1"));
    m.def(
        "optim_adam",
        [](const OptimTensors& t, double lr, double beta1, double beta2, double eps, bool amsgrad, bool decoupled,
           i64 step, double weight_decay, double l1) {
            if (step < 1) throw std::invalid_argument("optim_adam: step must be >= 1");
            t.require_state(0, "exp_avg");
            t.require_state(1, "exp_avg_sq");
            if (amsgrad) t.require_state(2, "max_exp_avg_sq");
            t.run(&opt::adam<float>, &opt::adam<double>,
                  opt::Adam{lr, beta1, beta2, eps, amsgrad, decoupled, step, {weight_decay, l1}});
        },
        py::arg("tensors"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("amsgrad"),
        py::arg("decoupled"), py::arg("step"), py::arg("weight_decay"), py::arg("l1"));
    m.def(
        "optim_rmsprop",
        [](const OptimTensors& t, double lr, double alpha, double eps, double momentum, bool centered,
           double weight_decay, double l1) {
            t.require_state(0, "square_avg");
            if (momentum > 0) t.require_state(1, "momentum");
            if (centered) t.require_state(2, "grad_avg");
            t.run(&opt::rmsprop<float>, &opt::rmsprop<double>,
                  opt::RMSprop{lr, alpha, eps, momentum, centered, {weight_decay, l1}});
        },
        py::arg("tensors"), py::arg("lr"), py::arg("alpha"), py::arg("eps"), py::arg("momentum"), py::arg("centered"),
        py::arg("weight_decay"), py::arg("l1"));
    m.def(
        "optim_adagrad",
        [](const OptimTensors& t, double lr, double lr_decay, double eps, i64 step, double weight_decay, double l1) {
            if (step < 1) throw std::invalid_argument("optim_adagrad: step must be >= 1");
            t.require_state(0, "sum");
            t.run(&opt::adagrad<float>, &opt::adagrad<double>, opt::Adagrad{lr, lr_decay, eps, step, {weight_decay, l1}});
        },
        py::arg("tensors"), py::arg("lr"), py::arg("lr_decay"), py::arg("eps"), py::arg("step"),
        py::arg("weight_decay"), py::arg("l1"));
}
