// The Python object of a plan (fastrnn._C.Plan): the core's plan and the arrays it reads, which
// this object keeps alive (the plan holds pointers). fastrnn._cuda takes the same object, so both
// modules describe a layer stack one way (csrc/core/plan.h).
#pragma once
#include <pybind11/pybind11.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "../core/plan.h"

namespace fastrnn {
namespace bindings {

// The compute type of a call or stream by its Python name: "" (the plan's dtype), "int8",
// "bfloat16".
inline Precision precision_of(const std::string& name) {
    if (name.empty()) return Precision::Float;
    if (name == "int8") return Precision::Int8;
    if (name == "bfloat16") return Precision::BF16;
    throw std::invalid_argument("precision: '" + name + "', expected '', 'int8' or 'bfloat16'");
}

struct __attribute__((visibility("hidden"))) PyPlan {  // hidden: pybind11's own types are
    std::shared_ptr<Plan> plan;
    pybind11::list arrays;
};

}  // namespace bindings
}  // namespace fastrnn
