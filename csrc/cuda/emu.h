// Host emulator of the CUDA execution model, for testing the CUDA kernels without a GPU.
//
// A launch runs the kernel body once per CUDA thread, each thread a fiber (ucontext) on the
// calling OS thread. A fiber runs until it reaches a block barrier (__syncthreads), a grid
// barrier (cooperative launch) or its end; a barrier opens when every thread it covers has
// reached it. A barrier that can never open (some threads of the block ended or wait at another
// barrier) is a kernel bug and raises std::logic_error. Blocks of an ordinary launch run one
// after another; a cooperative launch runs all blocks at once, as the GPU guarantees. Dynamic
// shared memory and device allocations start filled with 0xFF bytes (NaN for float and double),
// so a read of memory no one wrote shows up in the results.
//
// What it does not model: warps, memory coherence between blocks (everything is one host
// memory), timing, and concurrency between streams (everything runs in order on the caller).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>

namespace fastrnn {
namespace cuda {
namespace emu {

int thread_index();
int block_threads();
std::int64_t block_index();
std::int64_t grid_blocks();
void sync_block();
void sync_grid();
void* shared_memory();

void launch(std::int64_t blocks, int threads, std::size_t smem_bytes, bool cooperative,
            const std::function<void()>& body);

}  // namespace emu
}  // namespace cuda
}  // namespace fastrnn
