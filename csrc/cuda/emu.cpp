// Host emulator of the CUDA execution model (see emu.h). Built only for tests.
#include "emu.h"

#include <ucontext.h>

#include <cstdlib>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastrnn {
namespace cuda {
namespace emu {
namespace {

constexpr std::size_t kStackBytes = std::size_t(128) << 10;  // kernels keep only small arrays on their stack

enum class State { Ready, AtBlock, AtGrid, Done };

struct Fiber {
    ucontext_t ctx;
    std::int64_t block;
    int thread;
    State state;
};

struct Launch {
    std::int64_t blocks = 0, first = 0;  // grid size; first block of the group running now
    int threads = 0;
    const std::function<void()>* body = nullptr;
    std::vector<Fiber> fibers;
    std::vector<std::vector<unsigned char>> smem;  // per block of the group
    ucontext_t scheduler;
    Fiber* current = nullptr;
    std::exception_ptr error;
};

thread_local Launch* g_launch = nullptr;
thread_local std::vector<std::unique_ptr<char[]>> g_stacks;  // reused between launches

Launch& active() {
    if (!g_launch) throw std::logic_error("fastrnn CUDA emulator: a device function ran outside a kernel launch");
    return *g_launch;
}

void fiber_main() {
    Launch& L = *g_launch;
    try {
        (*L.body)();
    } catch (...) {
        if (!L.error) L.error = std::current_exception();
    }
    L.current->state = State::Done;  // returning resumes the scheduler (uc_link)
}

void wait(State at) {
    Launch& L = active();
    Fiber* f = L.current;
    f->state = at;
    swapcontext(&f->ctx, &L.scheduler);
}

// Runs blocks [first, first + count) to completion, all at once.
void run_group(Launch& L, std::int64_t first, std::int64_t count, std::size_t smem_bytes) {
    const std::size_t n = std::size_t(count) * std::size_t(L.threads);
    while (g_stacks.size() < n) g_stacks.emplace_back(new char[kStackBytes]);
    L.first = first;
    L.fibers.assign(n, Fiber{});
    L.smem.assign(std::size_t(count), std::vector<unsigned char>(smem_bytes, 0xFF));
    for (std::size_t i = 0; i < n; ++i) {
        Fiber& f = L.fibers[i];
        f.block = first + std::int64_t(i / std::size_t(L.threads));
        f.thread = int(i % std::size_t(L.threads));
        f.state = State::Ready;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = g_stacks[i].get();
        f.ctx.uc_stack.ss_size = kStackBytes;
        f.ctx.uc_link = &L.scheduler;
        makecontext(&f.ctx, fiber_main, 0);
    }
    for (;;) {
        for (Fiber& f : L.fibers)
            if (f.state == State::Ready) {
                L.current = &f;
                swapcontext(&L.scheduler, &f.ctx);
                if (L.error) std::rethrow_exception(L.error);
            }
        std::size_t done = 0, at_grid = 0;
        bool opened = false;
        for (std::int64_t b = 0; b < count; ++b) {
            std::size_t at_block = 0, ended = 0;
            Fiber* first_fiber = &L.fibers[std::size_t(b) * std::size_t(L.threads)];
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
                throw std::logic_error("fastrnn CUDA emulator: block " + std::to_string(first + b) +
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
    std::vector<unsigned char>& m = L.smem[std::size_t(L.current->block - L.first)];
    return m.empty() ? nullptr : m.data();
}

void launch(std::int64_t blocks, int threads, std::size_t smem_bytes, bool cooperative,
            const std::function<void()>& body) {
    if (blocks <= 0 || threads <= 0) return;
    if (g_launch) throw std::logic_error("fastrnn CUDA emulator: kernel launched from device code");
    Launch L;
    L.blocks = blocks;
    L.threads = threads;
    L.body = &body;
    g_launch = &L;
    try {
        if (cooperative)
            run_group(L, 0, blocks, smem_bytes);
        else
            for (std::int64_t b = 0; b < blocks; ++b) run_group(L, b, 1, smem_bytes);
    } catch (...) {
        g_launch = nullptr;
        throw;
    }
    g_launch = nullptr;
}

}  // namespace emu
}  // namespace cuda
}  // namespace fastrnn
