// The only place that knows which ISAs exist.
#pragma once
#include <string>
#include <vector>
#include "../kernels/bf16.h"
#include "../kernels/int8.h"
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

// The GEMM choices made per microarchitecture at start (gemm.h):
// - The AVX-512 microkernel's rows per register block: 6 on Intel cores, whose two full 512-bit
//   FMA ports need more independent chains per loaded B vector (6 rows measured 1.3-1.4x faster
//   than 8 on a Xeon); 8 elsewhere (Zen 4 splits 512-bit FMAs in two halves; its tuning chose
//   8). Up to 8 rows of A (N <= 8) one 8-row block is used either way, and 8-row blocks where
//   they divide N and 6-row ones do not (N = 16, 32, 40, 64...: gemm.h).
//   FASTRNN_MICROKERNEL_ROWS=6|8 overrides it. Bitwise the same results.
// - The hoisted input product of a long sequence (T*N >= 2048 rows, W_ih packed per call): on
//   the microkernel on Intel cores while AVX-512 is active (142 against OpenBLAS 0.3.31's 126
//   GFLOP/s at 6400 x 256 x 1024, 122 against 88 at 8000 x 64 x 256 on a Xeon; OpenBLAS also
//   zeroes C before it accumulates), BLAS elsewhere. FASTRNN_INPUT_GEMM=own|blas overrides it.
//   Another order of additions: the last bits of results change.
// set_microkernel_rows(0) / set_input_gemm("detect") go back to the detected choices.
void set_microkernel_rows(int rows);
void set_input_gemm(const std::string& which);  // "own", "blas" or "detect"

// The reduced-precision instructions of this CPU (and enabled by its OS), apart from the float32
// kernel ISA above: they serve the bf16 and int8 paths, whatever float32 ISA runs.
struct PrecisionFeatures {
    bool avx512_bf16 = false;  // vdpbf16ps, vcvtneps2bf16 (Cooper Lake, Sapphire Rapids, Zen 4...)
    bool amx_bf16 = false;     // AMX tiles with bf16 (Sapphire Rapids and later), CPU and OS state
    bool avx512_vnni = false;  // vpdpbusd on 512 bits
    bool avx_vnni = false;     // vpdpbusd on 256 bits, VEX-encoded (Alder Lake, Sapphire Rapids...)
};
PrecisionFeatures precision_features();

// The bf16 kernels in use (all give the same bits), by the active ISA: avx512 -> vdpbf16ps where
// the CPU has AVX512-BF16 and is not an Intel core (Zen 4 runs it at twice its FMA rate, Intel
// cores at about 0.6 of theirs), else float32 FMAs on widened bf16; avx2 -> the FMAs on 8 lanes;
// scalar -> the portable model (so set_isa("scalar") tests it).
const bf16::Kernels& bf16_kernels();
// AMX-BF16 (opt-in until the path has run on an AMX CPU: csrc/kernels/bf16_amx.h): with the
// active ISA avx512, bf16_kernels() returns the AMX tile GEMM. enable_amx(true) asks Linux for
// the tile state and returns "" when AMX is on, else why it is not (the CPU or the OS lacks it,
// or Linux refused it); the bf16 path stays as it was then. FASTRNN_AMX=1 does the same at the
// first bf16 call and prints the reason to stderr. use_amx_model(true) runs the same GEMM on a
// software model of the tiles, on any CPU (tests).
std::string enable_amx(bool on);
bool amx_enabled();
void use_amx_model(bool on);
// The int8 kernels in use: AVX512-VNNI while the active ISA is avx512 on a CPU that has it, else
// AVX-VNNI while the ISA is avx2 or better on a CPU that has that, else the portable path (all
// give the same bits).
const int8::Kernels& int8_kernels();

// The kernels of the ISA in use now (a call reads this once, so it never mixes two ISAs).
template <class T>
const KernelSet<T>& active_kernels();

}  // namespace fastrnn
