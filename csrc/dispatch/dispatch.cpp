#include "dispatch.h"

#include <atomic>
#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64))
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace fastrnn {

namespace {

// In order of preference (later = better); kIsas below follows the same order.
enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

struct IsaInfo {
    const char* name;
    bool (*supported)();
};

#if defined(__x86_64__) || defined(_M_X64)
bool cpu_has_avx2() {
    __builtin_cpu_init();  // also checks that the OS saves the ymm registers
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
bool cpu_has_avx512() {
    __builtin_cpu_init();  // also checks that the OS saves the zmm and mask registers
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f");
}
#else
bool cpu_has_avx2() { return false; }
bool cpu_has_avx512() { return false; }
#endif

const IsaInfo kIsas[] = {
    {"scalar", [] { return true; }},
    {"avx2", cpu_has_avx2},
    {"avx512", cpu_has_avx512},
};

// Each set is built on first use of its ISA only: building it runs code compiled for that ISA
// (GCC copies the AVX-512 set with zmm moves), which must never run on a CPU without it.
template <class T>
const KernelSet<T>& kernel_set(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
    if (isa == Isa::avx2) {
        static const KernelSet<T> avx2 = avx2_kernels<T>();
        return avx2;
    }
    if (isa == Isa::avx512) {
        static const KernelSet<T> avx512 = avx512_kernels<T>();
        return avx512;
    }
#endif
    static const KernelSet<T> scalar = scalar_kernels<T>();
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

bool intel_core() {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    return __builtin_cpu_is("intel");
#else
    return false;
#endif
}

// The AVX-512 GEMM choices (gemm.h), per microarchitecture. Intel cores (measured on a Xeon,
// family 6 model 207): 6 rows, the hoisted input products of long sequences on the microkernel;
// elsewhere 8 rows and BLAS (Zen 4's tuning; not remeasured). The reasoning is in dispatch.h.
int detect_rows() { return intel_core() ? 6 : 8; }

int rows_from_env() {
    const char* env = std::getenv("FASTRNN_MICROKERNEL_ROWS");
    if (!env || !*env) return detect_rows();
    const std::string v(env);
    return v == "6" ? 6 : v == "8" ? 8 : detect_rows();  // anything else: the detected value
}

std::atomic<int>& rows() {
    static std::atomic<int> r{rows_from_env()};
    return r;
}

// Where the hoisted input products run: 0 BLAS, 1 the microkernel, 2 detect (the microkernel on
// Intel cores while AVX-512 is the active ISA). FASTRNN_INPUT_GEMM=own|blas overrides it.
enum InputGemm : int { kBlas = 0, kOwn = 1, kDetect = 2 };
std::atomic<int>& input_gemm_choice() {
    static std::atomic<int> c{[] {
        const char* env = std::getenv("FASTRNN_INPUT_GEMM");
        const std::string v = env ? env : "";
        return v == "own" ? kOwn : v == "blas" ? kBlas : kDetect;
    }()};
    return c;
}

#if defined(__x86_64__) || defined(_M_X64)
struct CpuidLeaf {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
};
CpuidLeaf cpuid(unsigned leaf, unsigned sub) {
    CpuidLeaf r;
    if (!__get_cpuid_count(leaf, sub, &r.eax, &r.ebx, &r.ecx, &r.edx)) return CpuidLeaf{};
    return r;
}
// XCR0: the register states the OS saves (AMX tiles: bits 17 and 18). Needs OSXSAVE.
unsigned long long xcr0() {
    if (!((cpuid(1, 0).ecx >> 27) & 1u)) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (static_cast<unsigned long long>(hi) << 32) | lo;
}
#endif

PrecisionFeatures detect_precision() {
    PrecisionFeatures f;
#if defined(__x86_64__) || defined(_M_X64)
    const CpuidLeaf l70 = cpuid(7, 0), l71 = cpuid(7, 1);
    // these check the OS's register state; the 512-bit precision kernels also use AVX512BW/VL
    const bool zmm = cpu_has_avx512() && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    const bool ymm = cpu_has_avx2();
    f.avx512_bf16 = zmm && ((l71.eax >> 5) & 1u);
    f.avx512_vnni = zmm && ((l70.ecx >> 11) & 1u);
    f.avx_vnni = ymm && ((l71.eax >> 4) & 1u);
    const unsigned long long tiles = (1ull << 17) | (1ull << 18);
    f.amx_bf16 = ((l70.edx >> 22) & 1u) && ((l70.edx >> 24) & 1u) && (xcr0() & tiles) == tiles;
#endif
    return f;
}

}  // namespace

PrecisionFeatures precision_features() {
    static const PrecisionFeatures f = detect_precision();
    return f;
}

namespace {

// The AMX path's state: 0 off (the default), 1 on (the CPU's tiles), 2 the tile model (tests).
std::atomic<int>& amx_state() {
    static std::atomic<int> s{0};
    return s;
}

// Linux hands out the AMX tile state on request only (arch_prctl ARCH_REQ_XCOMP_PERM, for the
// whole process). It refuses when a thread's alternate signal stack is too small for the larger
// signal frame: pytest's faulthandler installs one. "" when granted, else why not.
std::string request_tile_state() {
#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64))
    constexpr long kReqXcompPerm = 0x1023, kXtiledata = 18;
    if (syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) != 0)
        return std::string("Linux refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM: ") + std::strerror(errno) +
               "); a thread's alternate signal stack may be too small for it (pytest's faulthandler installs one: "
               "run with -p no:faulthandler)";
    return "";
#else
    return "AMX needs Linux's arch_prctl tile permission here";
#endif
}

}  // namespace

std::string enable_amx(bool on) {
    if (!on) {
        amx_state().store(0);
        return "";
    }
    if (!precision_features().amx_bf16) return "this CPU (or its OS) has no AMX-BF16 tiles";
    const std::string why = request_tile_state();
    if (why.empty()) amx_state().store(1);
    return why;
}

bool amx_enabled() { return amx_state().load() == 1; }

void use_amx_model(bool on) { amx_state().store(on ? 2 : 0); }

const bf16::Kernels& bf16_kernels() {
    static const bool from_env = [] {  // FASTRNN_AMX=1: enable_amx(true) at the first use, or say why not
        const char* v = std::getenv("FASTRNN_AMX");
        if (v && std::string(v) == "1") {
            const std::string why = enable_amx(true);
            if (!why.empty()) std::fprintf(stderr, "fastrnn: FASTRNN_AMX=1 ignored: %s\n", why.c_str());
        }
        return true;
    }();
    (void)from_env;
    const int amx = amx_state().load();
    if (amx == 2) return bf16::amx_model_kernels();
#if defined(__x86_64__) || defined(_M_X64)
    const Isa isa = Isa(active().load());
    if (amx == 1 && isa == Isa::avx512) return bf16::amx_kernels();
    if (isa == Isa::avx512) {
        __builtin_cpu_init();
        // vdpbf16ps: twice the float32 FMA rate on Zen 4, about 0.6 of it on Intel cores
        if (precision_features().avx512_bf16 && !__builtin_cpu_is("intel")) return bf16::avx512_bf16_kernels();
        return bf16::avx512_fma_kernels();
    }
    if (isa == Isa::avx2) return bf16::avx2_fma_kernels();
#endif
    return bf16::portable_kernels();
}

const int8::Kernels& int8_kernels() {
#if defined(__x86_64__) || defined(_M_X64)
    const Isa isa = Isa(active().load());
    if (isa == Isa::avx512 && precision_features().avx512_vnni) return int8::avx512_vnni_kernels();
    if (isa >= Isa::avx2 && precision_features().avx_vnni) return int8::avx_vnni_kernels();
#endif
    return int8::portable_kernels();
}

int microkernel_rows() { return rows().load(std::memory_order_relaxed); }

void set_microkernel_rows(int r) {
    if (r != 0 && r != 6 && r != 8)
        throw std::invalid_argument("microkernel rows: " + std::to_string(r) + ", expected 6, 8 or 0 (detect)");
    rows().store(r == 0 ? detect_rows() : r);
}

bool own_input_gemm() {
    const int c = input_gemm_choice().load(std::memory_order_relaxed);
    return c == kOwn || (c == kDetect && intel_core() && Isa(active().load()) == Isa::avx512);
}

void set_input_gemm(const std::string& which) {
    if (which != "own" && which != "blas" && which != "detect")
        throw std::invalid_argument("input GEMM: '" + which + "', expected 'own', 'blas' or 'detect'");
    input_gemm_choice().store(which == "own" ? kOwn : which == "blas" ? kBlas : kDetect);
}

std::vector<std::string> available_isas() {
    std::vector<std::string> out;
    for (int i = int(sizeof(kIsas) / sizeof(kIsas[0])) - 1; i >= 0; --i)
        if (kIsas[i].supported()) out.push_back(kIsas[i].name);
    return out;
}

std::string get_isa() { return kIsas[active().load()].name; }

void set_isa(const std::string& name) { active().store(int(parse(name))); }

template <class T>
const KernelSet<T>& active_kernels() {
    return kernel_set<T>(Isa(active().load()));
}

template const KernelSet<float>& active_kernels<float>();
template const KernelSet<double>& active_kernels<double>();

}  // namespace fastrnn
