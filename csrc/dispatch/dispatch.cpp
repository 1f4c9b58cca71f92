#include "dispatch.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace fastrnn {

namespace {

// In order of preference (later = better); kIsas below follows the same order.
enum class Isa : int { scalar = 0, avx2 = 1 };

struct IsaInfo {
    const char* name;
    bool (*supported)();
};

#if defined(__x86_64__) || defined(_M_X64)
bool cpu_has_avx2() {
    __builtin_cpu_init();  // also checks that the OS saves the ymm registers
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
bool cpu_has_avx2() { return false; }
#endif

const IsaInfo kIsas[] = {
    {"scalar", [] { return true; }},
    {"avx2", cpu_has_avx2},
};

template <class T>
const KernelSet<T>& kernel_set(Isa isa) {
    static const KernelSet<T> scalar = scalar_kernels<T>();
#if defined(__x86_64__) || defined(_M_X64)
    static const KernelSet<T> avx2 = avx2_kernels<T>();
    if (isa == Isa::avx2) return avx2;
#endif
    return scalar;
}

Isa parse(const std::string& name) {
    std::string avail;
    for (const auto& n : available_isas()) avail += (avail.empty() ? "" : ", ") + n;
    for (int i = 0; i < int(sizeof(kIsas) / sizeof(kIsas[0])); ++i) {
        if (name == kIsas[i].name) {
            if (!kIsas[i].supported())
                throw std::invalid_argument("ISA '" + name + "' is not supported by this CPU (available: " + avail + ")");
            return Isa(i);
        }
    }
    throw std::invalid_argument("unknown ISA '" + name + "' (available: " + avail + ")");
}

Isa detect() {
    if (const char* env = std::getenv("FASTRNN_ISA"); env && *env) return parse(env);
    for (int i = int(sizeof(kIsas) / sizeof(kIsas[0])) - 1; i >= 0; --i)
        if (kIsas[i].supported()) return Isa(i);
    return Isa::scalar;
}

std::atomic<int>& active() {
    static std::atomic<int> isa{int(detect())};
    return isa;
}

}  // namespace

std::vector<std::string> available_isas() {
    std::vector<std::string> out;
    for (int i = int(sizeof(kIsas) / sizeof(kIsas[0])) - 1; i >= 0; --i)
        if (kIsas[i].supported()) out.push_back(kIsas[i].name);
    return out;
}

std::string get_isa() { return kIsas[active().load()].name; }

void set_isa(const std::string& name) { active().store(int(parse(name))); }

template <class T>
const CellKernels<T>& cell_kernels(const Desc& d) {
    const KernelSet<T>& k = kernel_set<T>(Isa(active().load()));
    switch (d.cell) {
        case CellKind::RNN_TANH: return k.rnn_tanh;
        case CellKind::RNN_RELU: return k.rnn_relu;
        case CellKind::LSTM: return k.lstm;
        case CellKind::GRU: return d.reset_after ? k.gru : k.gru_v1;
    }
    throw std::invalid_argument("unknown cell kind");
}

template const CellKernels<float>& cell_kernels<float>(const Desc&);
template const CellKernels<double>& cell_kernels<double>(const Desc&);

}  // namespace fastrnn
