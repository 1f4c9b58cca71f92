// The only place that knows which ISAs exist.
#pragma once
#include <string>
#include <vector>
#include "../kernels/interface.h"

namespace fastrnn {

template <class T> KernelSet<T> scalar_kernels();
#if defined(__x86_64__) || defined(_M_X64)
template <class T> KernelSet<T> avx2_kernels();
template <class T> KernelSet<T> avx512_kernels();
#endif

std::vector<std::string> available_isas();  // best first
std::string get_isa();
// Forces an ISA by name; throws std::invalid_argument naming the available ones.
void set_isa(const std::string& name);

// The kernels of the ISA in use now (a call reads this once, so it never mixes two ISAs).
template <class T>
const KernelSet<T>& active_kernels();

}  // namespace fastrnn
