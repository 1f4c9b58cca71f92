// The Python object of a plan (fastrnn._C.Plan): the core's plan and the arrays it reads, which
// this object keeps alive (the plan holds pointers). fastrnn._cuda takes the same object, so both
// modules describe a layer stack one way (csrc/core/plan.h).
#pragma once
#include <pybind11/pybind11.h>

#include <memory>

#include "../core/plan.h"

namespace fastrnn {
namespace bindings {

struct __attribute__((visibility("hidden"))) PyPlan {  // hidden: pybind11's own types are
    std::shared_ptr<Plan> plan;
    pybind11::list arrays;
};

}  // namespace bindings
}  // namespace fastrnn
