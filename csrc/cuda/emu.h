// Host emulator of the CUDA execution model, for testing the CUDA kernels without a GPU.
//
// A launch runs the kernel body once per CUDA thread, each thread a fiber (ucontext) on the
// calling OS thread. A fiber runs until it reaches a block barrier (__syncthreads), a grid
// barrier (cooperative launch), its end, or a global memory access where the scheduler decides
// to switch (exec.h's load/store, and the cells' loads and stores): at each access, with
// probability 1/64, another fiber of the launch runs next. A barrier opens when every
// thread it covers has reached it. A barrier that can never open (some threads of the block ended
// or wait at another barrier) is a kernel bug and raises std::logic_error.
//
// Blocks of an ordinary launch run in a shuffled order, up to kResidentFibers threads' worth of
// blocks at a time, interleaved: a missing barrier, or a block that reads what another block of
// the same launch writes, gives wrong results or NaN instead of hiding behind a fixed order. A
// cooperative launch runs all blocks at once, as the GPU guarantees, or is refused (launch()
// returns false, nothing ran) when its blocks could not all be resident or refusal is forced
// (set_schedule), as a GPU shared under MPS refuses it. The order and the switches follow a
// seed (set_schedule; FASTRNN_CUDA_EMU_SEED, default 1): a run is reproducible, and tests run
// several seeds. Dynamic shared memory and device allocations start filled with 0xFF bytes (NaN
// for float and double), so a read of memory no one wrote shows up in the results.
//
// Under AddressSanitizer the fibers' stacks are announced to it (__sanitizer_*_switch_fiber), so
// the emulated kernels run under ASan+UBSan in .ci/sanitize.
//
// What it does not model (docs/cuda.md): warps and their divergence, memory coherence and
// fences (every load sees the last store: a missing load_coherent or __threadfence goes
// unnoticed), timing, the CUDA runtime's own checks (launch bounds, occupancy, shared memory
// limits: the code under __CUDACC__), and concurrency between streams (everything runs in order,
// synchronously, on the caller).
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
// A global memory access of the running thread: a point where another thread may run first.
void memory_access();

// Runs `body` on blocks x threads emulated threads. Returns false (and runs nothing) for a
// cooperative launch whose `max_resident` blocks cannot hold the grid, or when refusal is forced.
bool launch(std::int64_t blocks, int threads, std::size_t smem_bytes, bool cooperative, std::int64_t max_resident,
            const std::function<void()>& body);

// The calling host thread's current device, as cudaSetDevice keeps it. The emulator has
// kDevices devices (all host memory), so that code switching devices is exercised.
constexpr int kDevices = 2;
int current_device();
void set_current_device(int device);

// The schedule of the following launches: the seed of the block order and the switches, and
// whether cooperative launches are refused. refused_launches() counts the cooperative launches
// refused since.
void set_schedule(std::uint64_t seed, bool refuse_cooperative);
std::int64_t refused_launches();

}  // namespace emu
}  // namespace cuda
}  // namespace fastrnn
