// Host emulator of the CUDA execution model (see emu.h). Built only for tests.
#include "emu.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define FASTRNN_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FASTRNN_EMU_ASAN 1
#endif
#endif
#ifdef FASTRNN_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace fastrnn {
namespace cuda {
namespace emu {
namespace {

// Kernels keep only small arrays on their stack; ASan's redzones make frames several times larger.
#ifdef FASTRNN_EMU_ASAN
constexpr std::size_t kStackBytes = std::size_t(1) << 20;
#else
constexpr std::size_t kStackBytes = std::size_t(128) << 10;
#endif
constexpr std::uint64_t kSwitchEvery = 64;     // a switch at 1 in 64 memory accesses (a power of 2)
constexpr std::size_t kResidentFibers = 1024;  // threads of an ordinary launch that run interleaved

std::atomic<std::uint64_t> g_seed{0};  // 0: not set yet (FASTRNN_CUDA_EMU_SEED, else 1)
std::atomic<bool> g_refuse_cooperative{false};
std::atomic<std::uint64_t> g_launches{0};
std::atomic<std::int64_t> g_refused{0};

std::uint64_t seed() {
    std::uint64_t s = g_seed.load();
    if (s == 0) {
        const char* v = std::getenv("FASTRNN_CUDA_EMU_SEED");
        s = v ? std::strtoull(v, nullptr, 10) + 1 : 2;  // stored + 1, so that seed 0 is a seed too
        g_seed.store(s);
    }
    return s - 1;
}

// splitmix64: small, fast, and good enough to pick orders and switch points.
struct Rng {
    std::uint64_t s;
    std::uint64_t next() {
        std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
};

// A fiber stack: mapped memory (touched pages only) with an inaccessible guard page at its low
// end, so that an overflow faults instead of overwriting a neighbour.
class Stack {
   public:
    Stack() {
        const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
        void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (p == MAP_FAILED) throw std::bad_alloc();
        mprotect(p, page, PROT_NONE);
        map_ = static_cast<char*>(p);
        base_ = map_ + page;
        bytes_ = kStackBytes + page;
    }
    ~Stack() { munmap(map_, bytes_); }
    Stack(const Stack&) = delete;
    Stack& operator=(const Stack&) = delete;
    char* base() const { return base_; }

   private:
    char* map_;
    char* base_;
    std::size_t bytes_;
};

enum class State { Ready, AtBlock, AtGrid, Done };

struct Fiber {
    ucontext_t ctx;
    std::int64_t block;
    int thread;
    int slot;  // the block's place in the group running now (its shared memory)
    State state;
    char* stack;
};

struct Launch {
    std::int64_t blocks = 0;
    int threads = 0;
    const std::function<void()>* body = nullptr;
    std::vector<Fiber> fibers;
    std::vector<std::vector<unsigned char>> smem;  // per block of the group
    ucontext_t scheduler;
    Fiber* current = nullptr;
    std::exception_ptr error;
    Rng rng{0};
    const void* scheduler_stack = nullptr;  // for ASan: the stack the fibers return to
    std::size_t scheduler_stack_bytes = 0;
};

thread_local Launch* g_launch = nullptr;
thread_local int t_device = 0;
thread_local std::vector<std::unique_ptr<Stack>> g_stacks;  // reused between launches

Launch& active() {
    if (!g_launch) throw std::logic_error("fastrnn CUDA emulator: a device function ran outside a kernel launch");
    return *g_launch;
}

// Fiber -> scheduler; returns when the scheduler runs this fiber again.
void to_scheduler(Launch& L, Fiber& f) {
#ifdef FASTRNN_EMU_ASAN
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, L.scheduler_stack, L.scheduler_stack_bytes);
#endif
    swapcontext(&f.ctx, &L.scheduler);
#ifdef FASTRNN_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, &L.scheduler_stack, &L.scheduler_stack_bytes);
#endif
}

// Scheduler -> fiber; returns when the fiber waits, switches or ends.
void to_fiber(Launch& L, Fiber& f) {
    L.current = &f;
#ifdef FASTRNN_EMU_ASAN
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, f.stack, kStackBytes);
#endif
    swapcontext(&L.scheduler, &f.ctx);
#ifdef FASTRNN_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

void fiber_main() {
    Launch& L = *g_launch;
#ifdef FASTRNN_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &L.scheduler_stack, &L.scheduler_stack_bytes);
#endif
    try {
        (*L.body)();
    } catch (...) {
        if (!L.error) L.error = std::current_exception();
    }
    L.current->state = State::Done;
#ifdef FASTRNN_EMU_ASAN
    __sanitizer_start_switch_fiber(nullptr, L.scheduler_stack, L.scheduler_stack_bytes);  // this fiber is over
#endif
}  // returning resumes the scheduler (uc_link)

void wait(State at) {
    Launch& L = active();
    L.current->state = at;
    to_scheduler(L, *L.current);
}

// Runs `group` (block indices) to completion, all at once, the fibers interleaved.
void run_group(Launch& L, const std::vector<std::int64_t>& group, std::size_t smem_bytes) {
    const std::size_t n = group.size() * std::size_t(L.threads);
    while (g_stacks.size() < n) g_stacks.emplace_back(new Stack());
    L.fibers.assign(n, Fiber{});
    L.smem.assign(group.size(), std::vector<unsigned char>(smem_bytes, 0xFF));
    for (std::size_t i = 0; i < n; ++i) {
        Fiber& f = L.fibers[i];
        f.slot = int(i / std::size_t(L.threads));
        f.block = group[std::size_t(f.slot)];
        f.thread = int(i % std::size_t(L.threads));
        f.state = State::Ready;
        f.stack = g_stacks[i]->base();
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = kStackBytes;
        f.ctx.uc_link = &L.scheduler;
        makecontext(&f.ctx, fiber_main, 0);
        // swapcontext does not need the stack fields again; cleared, ASan's swapcontext
        // interceptor does not wipe the stack's shadow memory at every switch.
        f.ctx.uc_stack.ss_sp = nullptr;
        f.ctx.uc_stack.ss_size = 0;
    }
    // Fibers are visited in a shuffled order; which runs after a switch follows from it.
    std::vector<std::size_t> order(n);
    for (std::size_t i = 0; i < n; ++i) order[i] = i;
    for (std::size_t i = n; i > 1; --i) std::swap(order[i - 1], order[L.rng.next() % i]);
    for (;;) {
        bool ran = false;
        for (std::size_t i : order) {
            Fiber& f = L.fibers[i];
            if (f.state != State::Ready) continue;
            ran = true;
            to_fiber(L, f);
            if (L.error) {
#ifdef FASTRNN_EMU_ASAN
                // Abandoned fibers leave their frames' redzones poisoned: clear them for the next use.
                for (std::size_t k = 0; k < n; ++k) ASAN_UNPOISON_MEMORY_REGION(L.fibers[k].stack, kStackBytes);
#endif
                std::rethrow_exception(L.error);
            }
        }
        if (ran) continue;  // until every fiber waits at a barrier or has ended
        std::size_t done = 0, at_grid = 0;
        bool opened = false;
        for (std::size_t b = 0; b < group.size(); ++b) {
            std::size_t at_block = 0, ended = 0;
            Fiber* first_fiber = &L.fibers[b * std::size_t(L.threads)];
            for (int t = 0; t < L.threads; ++t) {
                const State s = first_fiber[t].state;
                at_block += s == State::AtBlock;
                ended += s == State::Done;
                at_grid += s == State::AtGrid;
            }
            done += ended;
            if (at_block == std::size_t(L.threads)) {
                for (int t = 0; t < L.threads; ++t) first_fiber[t].state = State::Ready;
                opened = true;
            } else if (at_block > 0) {
                throw std::logic_error("fastrnn CUDA emulator: block " + std::to_string(group[b]) +
                                       ": __syncthreads reached by " + std::to_string(at_block) + " of " +
                                       std::to_string(L.threads) +
                                       " threads (the others ended or wait at a grid barrier)");
            }
        }
        if (opened) continue;
        if (done == n) return;
        if (at_grid == n) {
            for (Fiber& f : L.fibers) f.state = State::Ready;
            continue;
        }
        throw std::logic_error("fastrnn CUDA emulator: grid barrier reached by " + std::to_string(at_grid) + " of " +
                               std::to_string(n) + " threads (a cooperative launch needs all of them)");
    }
}

}  // namespace

int thread_index() { return active().current->thread; }
int block_threads() { return active().threads; }
std::int64_t block_index() { return active().current->block; }
std::int64_t grid_blocks() { return active().blocks; }
void sync_block() { wait(State::AtBlock); }
void sync_grid() { wait(State::AtGrid); }
void* shared_memory() {
    Launch& L = active();
    std::vector<unsigned char>& m = L.smem[std::size_t(L.current->slot)];
    return m.empty() ? nullptr : m.data();
}

void memory_access() {
    Launch* L = g_launch;
    if (L && L->current && (L->rng.next() & (kSwitchEvery - 1)) == 0) wait(State::Ready);
}

int current_device() { return t_device; }
void set_current_device(int device) {
    if (device < 0 || device >= kDevices)
        throw std::invalid_argument("set_device: the emulator has devices 0 to " + std::to_string(kDevices - 1) +
                                    ", got " + std::to_string(device));
    t_device = device;
}

void set_schedule(std::uint64_t s, bool refuse_cooperative) {
    g_seed.store(s + 1);
    g_refuse_cooperative.store(refuse_cooperative);
    g_launches.store(0);  // the same seed gives the same schedule from here on
    g_refused.store(0);
}

std::int64_t refused_launches() { return g_refused.load(); }

bool launch(std::int64_t blocks, int threads, std::size_t smem_bytes, bool cooperative, std::int64_t max_resident,
            const std::function<void()>& body) {
    if (blocks <= 0 || threads <= 0) return true;
    if (g_launch) throw std::logic_error("fastrnn CUDA emulator: kernel launched from device code");
    if (cooperative && (blocks > max_resident || g_refuse_cooperative.load())) {
        g_refused.fetch_add(1);
        return false;
    }
    Launch L;
    L.blocks = blocks;
    L.threads = threads;
    L.body = &body;
    L.rng = Rng{seed() * 0x100000001B3ull + g_launches.fetch_add(1)};
    std::vector<std::int64_t> order(static_cast<std::size_t>(blocks));
    for (std::int64_t b = 0; b < blocks; ++b) order[std::size_t(b)] = b;
    g_launch = &L;
    try {
        if (cooperative) {
            run_group(L, order, smem_bytes);
        } else {
            for (std::size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[L.rng.next() % i]);
            const std::size_t per_group = std::max<std::size_t>(1, kResidentFibers / std::size_t(threads));
            for (std::size_t b0 = 0; b0 < order.size(); b0 += per_group)
                run_group(L, std::vector<std::int64_t>(order.begin() + std::ptrdiff_t(b0),
                                                       order.begin() + std::ptrdiff_t(std::min(order.size(), b0 + per_group))),
                          smem_bytes);
        }
    } catch (...) {
        g_launch = nullptr;
        throw;
    }
    g_launch = nullptr;
    return true;
}

}  // namespace emu
}  // namespace cuda
}  // namespace fastrnn
