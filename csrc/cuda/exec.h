// The execution model the CUDA kernels are written against: thread and block indices, block and
// grid barriers, dynamic shared memory, global loads and stores. Under nvcc these are the CUDA built-ins;
// built by a host compiler with FASTRNN_CUDA_EMULATE they come from the host emulator
// (csrc/cuda/emu.h), which runs every CUDA thread of a launch as a fiber, so the very same kernel
// source is tested on machines without a GPU (tests/test_cuda.py).
//
// Kernels use 1-D grids and 1-D blocks only and decode their own tile indices.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#include <cooperative_groups.h>
#define FASTRNN_DEV __device__ __forceinline__
#define FASTRNN_UNROLL _Pragma("unroll")
#elif defined(FASTRNN_CUDA_EMULATE)
#include "emu.h"
#define FASTRNN_DEV inline
#define FASTRNN_UNROLL
// The cells' loads and stores (csrc/simd/scalar.h) are global memory accesses on the device.
#define FASTRNN_SCALAR_ACCESS() ::fastrnn::cuda::emu::memory_access()
#else
#error "csrc/cuda is compiled by nvcc, or by a host compiler with FASTRNN_CUDA_EMULATE"
#endif

namespace fastrnn {
namespace cuda {

#if defined(__CUDACC__)
FASTRNN_DEV int thread_index() { return int(threadIdx.x); }
FASTRNN_DEV int block_threads() { return int(blockDim.x); }
FASTRNN_DEV std::int64_t block_index() { return std::int64_t(blockIdx.x); }
FASTRNN_DEV std::int64_t grid_blocks() { return std::int64_t(gridDim.x); }
FASTRNN_DEV void sync_block() { __syncthreads(); }
// Only in kernels started with a cooperative launch (cudaLaunchCooperativeKernel): every block
// of the grid is resident, and this barrier includes the memory fence that makes the writes of
// all blocks before it visible to all blocks after it.
FASTRNN_DEV void sync_grid() { cooperative_groups::this_grid().sync(); }
template <class T>
FASTRNN_DEV T* shared_memory() {
    extern __shared__ double fastrnn_dynamic_smem[];  // double: 8-byte alignment for every dtype
    return reinterpret_cast<T*>(fastrnn_dynamic_smem);
}
// Reads data that other blocks of the same (persistent) kernel wrote before the last grid
// barrier: cached in L2 only, never a stale L1 line.
template <class T>
FASTRNN_DEV T load_coherent(const T* p) { return __ldcg(p); }
// Global memory, read and written by the kernels themselves (the emulator may switch threads here).
template <class T>
FASTRNN_DEV T load(const T* p) { return *p; }
template <class T>
FASTRNN_DEV void store(T* p, T v) { *p = v; }
#else
inline int thread_index() { return emu::thread_index(); }
inline int block_threads() { return emu::block_threads(); }
inline std::int64_t block_index() { return emu::block_index(); }
inline std::int64_t grid_blocks() { return emu::grid_blocks(); }
inline void sync_block() { emu::sync_block(); }
inline void sync_grid() { emu::sync_grid(); }
template <class T>
T* shared_memory() { return static_cast<T*>(emu::shared_memory()); }
template <class T>
T load(const T* p) {
    emu::memory_access();
    return *p;
}
template <class T>
void store(T* p, T v) {
    emu::memory_access();
    *p = v;
}
// No cache is modelled: a plain load, which sees every earlier store.
template <class T>
T load_coherent(const T* p) { return load(p); }
#endif

}  // namespace cuda
}  // namespace fastrnn
