// The portable kernels: compiled for the baseline ISA, always available, the reference path.
#define FASTRNN_ISA_NS isa_scalar
#include "kernel_set.h"
#include "../dispatch/dispatch.h"

namespace fastrnn {

template <class T>
KernelSet<T> scalar_kernels() {
    return isa_scalar::make_kernel_set<isa_scalar::Scalar<T>, isa_scalar::Scalar<T>, T>();
}
template KernelSet<float> scalar_kernels<float>();
template KernelSet<double> scalar_kernels<double>();

}  // namespace fastrnn
