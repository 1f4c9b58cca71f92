// The optional CUDA backend: the CPU driver's forward and BPTT (csrc/core/driver.h) on a CUDA
// stream. Same Desc, weight layout (torch's), training cache layout and semantics, so a cache
// written by one backend is read by the other. Every pointer handed to forward/backward is device
// memory (UVA pointers from cudaMalloc, torch or CuPy) except the Desc, the LayerWeights /
// LayerGrads arrays themselves (host arrays of device pointers) and the options. Calls only
// enqueue work on `stream`; nothing is allocated: the caller passes a workspace of the size the
// *_workspace_bytes functions return.
//
// This header needs no CUDA headers: the pybind11 module (module.cpp) is compiled by the host
// compiler and links the nvcc-compiled driver.cu. Built with FASTRNN_CUDA_EMULATE, driver.cu runs
// the same kernels on the host emulator (emu.h) and "device" memory is host memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "../core/driver.h"

namespace fastrnn {
namespace cuda {

using Stream = void*;  // cudaStream_t; null: the legacy default stream

// "cuda" or "emulator" (FASTRNN_CUDA_EMULATE build).
const char* backend();

// Number of usable devices; 0 with `why` set when none can be used (no driver, driver too old
// for this runtime, no device, ...).
int device_count(std::string* why);
int runtime_version();  // e.g. 13000; 0 when unknown
int driver_version();   // 0: no driver
std::string device_name(int device);
int device_capability(int device);  // major * 10 + minor
int get_device();
void set_device(int device);

// Memory and copies. Errors throw std::runtime_error (std::bad_alloc when out of memory).
void* device_malloc(std::size_t bytes);
void device_free(void* p);
void copy(void* dst, const void* src, std::size_t bytes, Stream stream);  // any direction (UVA)
void zero(void* dst, std::size_t bytes, Stream stream);
void synchronize(Stream stream);
// dst (C-contiguous) = the `ndim` <= 4 dimensional view of src with byte strides; itemsize 1, 2, 4 or 8.
void copy_strided(void* dst, const void* src, int ndim, const std::int64_t* shape, const std::int64_t* strides,
                  int itemsize, Stream stream);

// Workspace bytes of one call (for `double_precision` or float32 data).
std::int64_t forward_workspace_bytes(const Desc& d, bool training, bool double_precision);
std::int64_t backward_workspace_bytes(const Desc& d, bool retain, bool diagnostics, bool double_precision);

// Which recurrent kernels a layer runs: a persistent cooperative kernel for all steps, or one
// launch per step. FASTRNN_CUDA_PERSISTENT=0 never uses the persistent kernel, =1 whenever it
// fits the device (shared memory, co-resident blocks, cooperative launch), unset or "auto" when
// it fits and the batch is small (N <= kPersistentMaxBatch).
constexpr std::int64_t kPersistentMaxBatch = 16;
bool uses_persistent(const Desc& d, bool forward, bool diagnostics, bool double_precision);

template <class T>
void forward(const Desc& d, const LayerWeights<T>* w, const T* x, const T* h0, const T* c0,
             const std::int64_t* lengths, const T* masks, T* out, T* h_n, T* c_n, T* cache, void* workspace,
             std::size_t workspace_bytes, Stream stream);

// opt.diag pointers are device arrays [L, D, T] (added to, like the CPU's).
template <class T>
void backward(const Desc& d, const LayerWeights<T>* w, const T* x, const std::int64_t* lengths, const T* masks,
              T* cache, const T* grad_out, const T* grad_h_n, const T* grad_c_n, T* grad_x, T* grad_h0, T* grad_c0,
              const LayerGrads<T>* g, const BackwardOptions<T>& opt, void* workspace, std::size_t workspace_bytes,
              Stream stream);

}  // namespace cuda
}  // namespace fastrnn
